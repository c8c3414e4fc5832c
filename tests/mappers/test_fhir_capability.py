"""The CapabilityStatement (`mappers.fhir_capability`), validated as R4 (fhir.resources R4B)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from mappers.fhir_capability import capability_statement
from mappers.fhir_json import resource_json
from mappers.profiles import (
    AI_DEVICE_PROFILE,
    AI_OBSERVATION_PROFILE,
    AI_PROVENANCE_PROFILE,
    ED_ALERT_PROFILE,
    MODEL_CARD_PROFILE,
    REPORT_AUDIT_PROFILE,
    REPORT_PROFILE,
    load_structure_definition,
)

BASE = "https://ecg.example.org/fhir"
WHEN = datetime(2026, 11, 22, 8, 30, tzinfo=UTC)


def _statement(**kwargs: Any) -> dict[str, Any]:
    model = capability_statement(software_version="0.1.0", base_url=BASE, date=WHEN, **kwargs)
    return resource_json(model)


def _rest(cs: dict[str, Any], mode: str) -> dict[str, Any]:
    (rest,) = [r for r in cs["rest"] if r["mode"] == mode]
    return dict(rest)


def _interactions(entry: dict[str, Any]) -> set[str]:
    return {i["code"] for i in entry["interaction"]}


def test_is_a_valid_r4_capability_statement() -> None:
    cs = _statement()
    again = CapabilityStatement.model_validate(cs)  # R4B model: R4 4.0.1 JSON
    assert resource_json(again) == cs
    assert cs["fhirVersion"] == "4.0.1"
    assert cs["kind"] == "instance"
    assert cs["status"] == "active"
    assert cs["date"].startswith("2026-11-22T08:30:00")
    assert cs["software"] == {"name": "ecgbridge", "version": "0.1.0"}
    assert cs["implementation"]["url"] == BASE
    assert cs["format"] == ["json"]
    assert [r["mode"] for r in cs["rest"]] == ["server", "client"]


def test_server_part_is_what_the_api_answers() -> None:
    server = _rest(_statement(), "server")
    by_type = {r["type"]: r for r in server["resource"]}
    assert set(by_type) == {"Observation", "StructureDefinition"}
    assert _interactions(by_type["Observation"]) == {"create"}
    assert _interactions(by_type["StructureDefinition"]) == {"read"}
    assert _interactions(server) == {"batch"}  # POST [base] with a Bundle
    assert "security" not in server
    assert "Bearer" in _rest(_statement(bearer_auth=True), "server")["security"]["description"]


def test_client_part_declares_the_published_profiles() -> None:
    client = _rest(_statement(), "client")
    by_type = {r["type"]: r for r in client["resource"]}
    assert set(by_type) == {
        "DiagnosticReport",
        "Observation",
        "Provenance",
        "AuditEvent",
        "Device",
        "DocumentReference",
        "Communication",
    }
    assert all(_interactions(r) == {"update"} for r in client["resource"])
    expected = {
        "DiagnosticReport": REPORT_PROFILE,
        "Observation": AI_OBSERVATION_PROFILE,
        "Provenance": AI_PROVENANCE_PROFILE,
        "AuditEvent": REPORT_AUDIT_PROFILE,
        "Device": AI_DEVICE_PROFILE,
        "DocumentReference": MODEL_CARD_PROFILE,
        "Communication": ED_ALERT_PROFILE,
    }
    assert set(expected) == set(by_type)  # every written resource declares its profile
    for rtype, url in expected.items():
        assert by_type[rtype]["supportedProfile"] == [url]
        assert by_type[rtype]["profile"] == url
    for entry in client["resource"]:
        for url in entry.get("supportedProfile", []):
            sd = load_structure_definition(url.rsplit("/", 1)[-1])
            assert sd is not None and sd["url"] == url
            assert sd["type"] == entry["type"]


def test_naive_date_is_taken_as_utc() -> None:
    cs = _statement()
    naive = resource_json(
        capability_statement(software_version="1", base_url=BASE, date=WHEN.replace(tzinfo=None))
    )
    assert naive["date"] == cs["date"]


def test_report_read_and_search_are_declared_when_reports_can_be_read() -> None:
    server = _rest(_statement(report_read=True), "server")
    by_type = {r["type"]: r for r in server["resource"]}
    report = by_type["DiagnosticReport"]
    assert _interactions(report) == {"read", "search-type"}
    assert {p["name"] for p in report["searchParam"]} == {"subject", "patient"}
    assert report["supportedProfile"] == [REPORT_PROFILE]
    assert "DiagnosticReport" not in {r["type"] for r in _rest(_statement(), "server")["resource"]}


def test_subscription_topics_are_documented_on_the_server() -> None:
    topic = "https://ehr.example.org/SubscriptionTopic/ecg"
    server = _rest(_statement(subscription_topics=[topic]), "server")
    assert topic in server["documentation"]
    assert "subscription-notification" in server["documentation"]
    assert "subscription-notification" not in _rest(_statement(), "server")["documentation"]
