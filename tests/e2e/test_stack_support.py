"""The e2e stack helper's own checks: wrong arguments are refused before anything starts, and
a missing part is named when asked for. Starts no process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import EcgbridgeServe, ecgbridge_env, setting_vars
from tests.support.stack import EcgbridgeStack, ecgbridge_stack


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fhir_profiles_dir": Path("profiles")}, "fhir_profiles_dir is for the FHIR server"),
        ({"broker": "rabbitmq"}, "broker must be 'redis' or 'embedded', not 'rabbitmq'"),
    ],
)
def test_wrong_arguments_are_refused_before_anything_starts(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message), ecgbridge_stack(tmp_path, **kwargs):
        pytest.fail("the stack started")
    assert list(tmp_path.iterdir()) == []  # no process wrote its log


def test_a_missing_part_is_named() -> None:
    env = ecgbridge_env()
    serve = EcgbridgeServe(env, Path("serve.log"))  # made, not started
    stack = EcgbridgeStack(Path("."), env, serve, worker=None, redis=None, fhir=None)
    with pytest.raises(RuntimeError, match=r"no separate worker \(broker='embedded'\)"):
        stack.require_worker()
    with pytest.raises(RuntimeError, match=r"no FHIR server \(fhir=False\)"):
        stack.require_fhir()


def test_settings_become_their_environment_variables() -> None:
    assert setting_vars({"otel_file": "/x.jsonl"}) == {"ECGBRIDGE_OTEL_FILE": "/x.jsonl"}
    env = ecgbridge_env(explain="true")
    assert env["ECGBRIDGE_EXPLAIN"] == "true" and env["ECGBRIDGE_REPORT_PNG"] == "false"
