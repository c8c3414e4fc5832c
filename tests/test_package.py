"""The project's own packages are the ones imported (a PyPI package named `inference` exists)."""

from pathlib import Path

import inference
import integration
import mappers

ROOT = Path(__file__).resolve().parents[1]


def test_packages_resolve_inside_this_project() -> None:
    for pkg in (inference, mappers, integration):
        assert pkg.__file__ is not None
        assert Path(pkg.__file__).resolve().is_relative_to(ROOT), pkg.__file__


def test_inference_imports_neither_mappers_nor_integration() -> None:
    for path in (ROOT / "inference").rglob("*.py"):
        text = path.read_text()
        assert "import mappers" not in text and "from mappers" not in text, path
        assert "import integration" not in text and "from integration" not in text, path


def test_mappers_do_not_import_integration_or_open_sockets() -> None:
    for path in (ROOT / "mappers").rglob("*.py"):
        text = path.read_text()
        assert "from integration" not in text and "import integration" not in text, path
        for io in ("import socket", "import httpx", "import sqlalchemy", "open("):
            assert io not in text, (path, io)
