"""Structured logs without PHI (integration/logging_setup.py, integration/observability.py):
the JSON and text lines, the context fields, the PHI guard, the settings, and the CLI's
answer to a wrong setting."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from pydantic import ValidationError

from integration.logging_setup import (
    REDACTED,
    JsonFormatter,
    PhiFilter,
    TextFormatter,
    configure_logging,
    log_context,
    scrub_text,
)
from integration.observability import ObservabilitySettings
from tests.support.processes import ROOT, ecgbridge_env

PID = "PID|1||MRN12345^^^HOSP^MR||DOE^JANE||19500101|F"


class _Capture:
    """A logger whose records go through the PHI filter and a formatter into a buffer."""

    def __init__(self, formatter: logging.Formatter) -> None:
        self.buffer = io.StringIO()
        handler = logging.StreamHandler(self.buffer)
        handler.addFilter(PhiFilter())
        handler.setFormatter(formatter)
        self.logger = logging.getLogger(f"test.capture.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(handler)

    def lines(self) -> list[str]:
        return self.buffer.getvalue().splitlines()

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]


@pytest.fixture
def jlog() -> _Capture:
    return _Capture(JsonFormatter())


def test_a_json_line_has_the_base_and_context_fields(jlog: _Capture) -> None:
    with log_context(item_id="item-1", channel="mllp"):
        jlog.logger.info(
            "message %s committed", "MSG1", extra={"sender": "LAB|WARD", "event": "committed"}
        )
    (line,) = jlog.json()
    assert line["message"] == "message MSG1 committed"
    assert line["level"] == "INFO" and line["logger"] == jlog.logger.name
    assert line["ts"].endswith("+00:00") and "T" in line["ts"]
    assert line["item_id"] == "item-1" and line["channel"] == "mllp"
    assert line["sender"] == "LAB|WARD" and line["event"] == "committed"
    assert "trace_id" not in line  # no span is current


def test_the_current_span_gives_trace_and_span_ids(jlog: _Capture) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("s") as current:
        jlog.logger.warning("inside")
    (line,) = jlog.json()
    ctx = current.get_span_context()
    assert line["trace_id"] == format(ctx.trace_id, "032x")
    assert line["span_id"] == format(ctx.span_id, "016x")


def test_phi_passed_with_extra_is_redacted_and_named(jlog: _Capture) -> None:
    jlog.logger.info(
        "analysed",
        extra={
            "patient_id": "MRN12345",
            "birth_date": "1950-01-01",
            "MRN": "MRN12345",
            "patient_name": "Jane Doe",
            "details": {"Given_Name": "Jane", "leads": 12, "nested": [{"dob": "1950"}]},
            "item_id": "item-2",
        },
    )
    (line,) = jlog.json()
    raw = jlog.lines()[0]
    for secret in ("MRN12345", "1950", "Jane", "Doe"):
        assert secret not in raw
    assert line["patient_id"] == REDACTED and line["birth_date"] == REDACTED
    assert line["details"]["leads"] == 12 and line["details"]["Given_Name"] == REDACTED
    assert line["item_id"] == "item-2"
    assert line["phi_redacted"] == [
        "MRN",
        "birth_date",
        "details.Given_Name",
        "details.nested.dob",
        "patient_id",
        "patient_name",
    ]


def test_a_message_that_does_not_format_is_logged_without_its_arguments(
    jlog: _Capture,
) -> None:
    """The filter runs outside the handler's error handling: a wrong format must neither
    raise at the caller (an MLLP connection, a task) nor print its arguments."""
    jlog.logger.info("count %d of %s", "MRN12345", PID)  # wrong types, PHI in the args
    (line,) = jlog.json()
    assert line["message"] == "count %d of %s [arguments dropped: did not format]"
    assert "MRN12345" not in jlog.buffer.getvalue()


def test_a_pasted_hl7_message_or_fhir_patient_loses_its_patient_data(jlog: _Capture) -> None:
    message = f"MSH|^~\\&|ECG|WARD|||20260101||ORU^R01|M1|P|2.5.1\r{PID}\rOBR|1"
    jlog.logger.warning("could not parse %s", message)
    patient = {"resourceType": "Patient", "birthDate": "1950-01-01", "name": [{"family": "Doe"}]}
    jlog.logger.warning("bad resource %s", json.dumps(patient))
    first, second = jlog.json()
    assert "DOE" not in first["message"] and "19500101" not in first["message"]
    assert f"PID|{REDACTED}" in first["message"] and "OBR|1" in first["message"]
    assert first["phi_redacted"] == ["message"]
    assert "1950" not in second["message"] and "Doe" not in second["message"]
    assert '"resourceType": "Patient"' in second["message"]


def test_exception_text_is_scrubbed_too(jlog: _Capture) -> None:
    try:
        raise ValueError(f"cannot read {PID}")
    except ValueError:
        jlog.logger.exception("failed")
    (line,) = jlog.json()
    assert "ValueError" in line["exc"] and "DOE" not in line["exc"]


def test_text_lines_carry_the_context_after_the_message() -> None:
    cap = _Capture(TextFormatter())
    with log_context(item_id="item-3"):
        cap.logger.info("done", extra={"mrn": "MRN1"})
    (line,) = cap.lines()
    assert " INFO test.capture." in line and ": done [item_id=item-3" in line
    assert "phi_redacted=['mrn']" in line and "MRN1" not in line


def test_log_context_names_only_known_fields() -> None:
    with pytest.raises(ValueError, match="unknown log context field"), log_context(patient="x"):
        pass


def test_a_pid_segment_in_a_bytes_repr_is_scrubbed() -> None:
    text = repr(f"MSH|^~\\&|ECG\r{PID}\rOBR|1".encode())
    assert scrub_text(text) == repr(f"MSH|^~\\&|ECG\rPID|{REDACTED}\rOBR|1".encode())


def test_scrub_text_leaves_ordinary_text_alone() -> None:
    text = "inbox item 3f2 done: DiagnosticReport/ecg-ab12 (MSH-10 M1)"
    assert scrub_text(text) == text


def test_configure_logging_installs_one_handler_and_can_be_called_again() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        buffer = io.StringIO()
        configure_logging(fmt="text", level="WARNING")
        configure_logging(fmt="json", level="INFO", stream=buffer)
        assert len(root.handlers) == 1
        logging.getLogger("integration.x").info("hello", extra={"dob": "1950-01-01"})
        line = json.loads(buffer.getvalue())
        assert line["message"] == "hello" and line["dob"] == REDACTED
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])


def test_settings_defaults_per_command(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOG_FORMAT", "LOG_LEVEL", "OTEL_EXPORTER", "OTEL_FILE"):
        monkeypatch.delenv(f"ECGBRIDGE_{name}", raising=False)
    obs = ObservabilitySettings()
    assert obs.format_for("serve") == "json" and obs.format_for("worker") == "json"
    assert obs.format_for("analyze") == "text" and obs.format_for("backfill") == "text"
    assert obs.effective_exporter == "none" and obs.log_level == "INFO"
    assert ObservabilitySettings(log_format="JSON").format_for("analyze") == "json"
    assert ObservabilitySettings(otel_file=Path("s.jsonl")).effective_exporter == "console"


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("ECGBRIDGE_LOG_FORMAT", "xml", "ECGBRIDGE_LOG_FORMAT='xml' is not a log format"),
        ("ECGBRIDGE_LOG_LEVEL", "loud", "ECGBRIDGE_LOG_LEVEL='loud' is not a log level"),
        ("ECGBRIDGE_OTEL_EXPORTER", "jaeger", "EXPORTER='jaeger' is not a span exporter"),
    ],
)
def test_wrong_settings_are_named(
    variable: str, value: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=says):
        ObservabilitySettings()


def test_a_span_file_without_the_console_exporter_is_refused() -> None:
    with pytest.raises(ValidationError, match="ECGBRIDGE_OTEL_FILE is written by the console"):
        ObservabilitySettings(otel_exporter="none", otel_file=Path("s.jsonl"))


def test_the_cli_refuses_a_wrong_log_setting_in_plain_words() -> None:
    env = ecgbridge_env(log_format="yaml")
    done = subprocess.run(
        [sys.executable, "-m", "integration.cli", "doctor"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "ecgbridge: error: ECGBRIDGE_LOG_FORMAT='yaml' is not a log format" in done.stderr


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        (  # nested arrays and objects: the whole value, not up to the first "]"
            '{"address":[{"line":["1 Main St"],"city":"Springfield","postalCode":"12345"}],'
            '"gender":"female"}',
            ['"gender":"female"'],
            ["Main St", "Springfield", "12345"],
        ),
        (  # a Python dict repr
            "{'birthDate': '1950-01-01', 'gender': 'female'}",
            ["'gender': 'female'"],
            ["1950-01-01"],
        ),
        (  # name[].text and the MRN in identifier
            '{"name":[{"text":"Jane Doe"}],"identifier":[{"value":"MRN-9"}],"id":"p1"}',
            ['"id":"p1"'],
            ["Jane Doe", "MRN-9"],
        ),
        (  # next of kin, guarantor: other persons' names
            "MSH|^~\\&|A|B\rNK1|1|DOE^JOHN|SPO\rGT1|1||ROE^RICHARD\rOBX|1|NA|V1",
            ["OBX|1|NA|V1", "NK1|[redacted]", "GT1|[redacted]"],
            ["JOHN", "RICHARD"],
        ),
        ('{"name": "cut off [ here', [], ["cut off"]),  # an unbalanced, truncated text
    ],
)
def test_scrub_text_finds_patient_data_in_any_shape(
    text: str, kept: list[str], gone: list[str]
) -> None:
    clean = scrub_text(text)
    assert all(k in clean for k in kept), clean
    assert not any(g in clean for g in gone), clean
