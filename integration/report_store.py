"""Read access to the DiagnosticReports ecgbridge wrote (FHIR R4 read and search).

The inbox is the index: an ECG's row holds its ``report_ref`` (``DiagnosticReport/<id>``,
with ``/_history/<n>`` from a FHIR server) and the keyed hash (HMAC) of its patient
identifier, so reports are found by id and by patient without decrypting anything. The
resource itself is read back from where the worker wrote it (`ReportSource`): the EHR's
FHIR server (``ECGBRIDGE_FHIR_BASE_URL``) or the ndjson sink (``ECGBRIDGE_OUT_DIR``), so the
answer is byte for byte the report that was written (the final one once the explanations
are in), not a re-rendering. Why not rebuild it from ``result_json``: that JSON is the
``analyze --json`` summary and lacks the territory and rhythm thresholds, the ensemble
ranges and the picture, so a rebuilt report would differ from the one written.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from integration.audit import AuditError, AuditEvent, EventKind, PatientRef
from integration.auditing import Auditor
from integration.errors import InboxError
from integration.inbox import Inbox, InboxItem, Status
from integration.settings import Settings
from integration.subscriptions import EhrUnavailableError, FhirReader, FocusError, smart_auth

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"

#: FHIR R4 id (``[A-Za-z0-9\-\.]{1,64}``): also keeps LIKE patterns free of wildcards.
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
DEFAULT_COUNT = 50
MAX_COUNT = 200
#: Deepest page a search may ask for (``_offset``): a patient's reports, not a bulk export.
MAX_OFFSET = 10_000


@dataclass(frozen=True, slots=True)
class IndexedReport:
    """An ECG whose report was written: the inbox id and the report's FHIR id."""

    ecg_id: str
    report_id: str
    status: Status
    received_at: datetime


def report_id_of(report_ref: str) -> str:
    """``DiagnosticReport/<id>[/_history/<n>]`` -> ``<id>``."""
    parts = report_ref.split("/")
    return parts[1] if len(parts) >= 2 else report_ref


class ReportIndex:
    """Report lookups on the inbox's columns (never its payloads, which may be encrypted)."""

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox

    @classmethod
    def for_inbox(cls, inbox: Inbox) -> ReportIndex:
        return cls(inbox)

    def find(self, report_id: str) -> IndexedReport | None:
        if not FHIR_ID.match(report_id):
            return None
        item = self._inbox.find_report(f"DiagnosticReport/{report_id}")
        return None if item is None else _indexed(item)

    def for_patient(self, keys: Iterable[str], *, limit: int) -> list[IndexedReport]:
        return [_indexed(i) for i in self._inbox.reports_for(keys, limit=limit)]


def _indexed(item: InboxItem) -> IndexedReport:
    return IndexedReport(
        ecg_id=item.id,
        report_id=report_id_of(item.report_ref or ""),
        status=item.status,
        received_at=item.received_at,
    )


class ReportSource(Protocol):
    """Where the written reports are read back from."""

    def read(self, report_id: str) -> dict[str, Any] | None: ...


class NdjsonReportSource:
    """The ndjson sink's ``DiagnosticReport.ndjson`` (current version of each report), with
    the attachments the sink moved to files put back inline as ``data``."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def read(self, report_id: str) -> dict[str, Any] | None:
        path = self.out_dir / "DiagnosticReport.ndjson"
        if not path.exists():
            return None
        prefix = f'{{"resourceType":"DiagnosticReport","id":"{report_id}"'
        found: dict[str, Any] | None = None
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(prefix + ",") or line.startswith(prefix + "}"):
                    found = json.loads(line)
        return None if found is None else self._inline(found)

    def _inline(self, report: dict[str, Any]) -> dict[str, Any]:
        forms = report.get("presentedForm")
        if not forms:
            return report
        out = []
        for form in forms:
            url = form.get("url")
            target = self.out_dir / str(url) if isinstance(url, str) else None
            if target is not None and url.startswith("attachments/") and target.is_file():
                data = base64.b64encode(target.read_bytes()).decode()
                form = {k: v for k, v in form.items() if k != "url"} | {"data": data}
            out.append(form)
        return report | {"presentedForm": out}


class FhirReportSource:
    """``GET [base]/DiagnosticReport/<id>`` on the FHIR server the worker writes to."""

    def __init__(self, reader: FhirReader) -> None:
        self._reader = reader

    def read(self, report_id: str) -> dict[str, Any] | None:
        return self._reader.read(f"DiagnosticReport/{report_id}")


@dataclass(frozen=True, slots=True)
class FoundReport:
    indexed: IndexedReport
    resource: dict[str, Any]


class ReportStore:
    """Find written reports by id or by patient.

    `patient_key` is the HMAC the intake stored (`AuditLog.patient_key`); `patients`, when
    given, reads ``Patient/<id>`` at the EHR so a search by subject also finds the ECGs that
    were keyed by that Patient's identifiers (MRNs), as the intake keys them when it has one.
    """

    def __init__(
        self,
        *,
        index: ReportIndex,
        source: ReportSource,
        patient_key: Callable[[str], str] | None,
        patients: FhirReader | None = None,
    ) -> None:
        self._index = index
        self._source = source
        self._key = patient_key
        self._patients = patients

    @property
    def searchable(self) -> bool:
        return self._key is not None

    def read(self, report_id: str) -> FoundReport | None:
        """The report, or None when ecgbridge wrote no such report (or it is gone from its
        destination). Raises `InboxError`, and `EhrUnavailableError` for a FHIR source."""
        indexed = self._index.find(report_id)
        if indexed is None:
            return None
        resource = self._source.read(indexed.report_id)
        if resource is None:
            return None
        return FoundReport(indexed, resource)

    def keys_for_subject(self, reference: str) -> tuple[list[str], list[str]]:
        """The search keys for ``Patient/<id>``, and warnings (the EHR could not say which
        identifiers the Patient has)."""
        if self._key is None:
            return [], []
        refs = [reference]
        warnings: list[str] = []
        if self._patients is not None:
            refs.append(f"{self._patients.base_url}/{reference}")
            try:
                patient = self._patients.read(reference)
            except (EhrUnavailableError, FocusError) as exc:
                patient = None
                warnings.append(
                    f"the EHR could not be asked for {reference}'s identifiers ({exc}); "
                    "ECGs sent with the patient's MRN only may be missing"
                )
            for ident in (patient or {}).get("identifier") or []:
                if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                    refs.append(ident["value"])
        return [self._key(r) for r in refs], warnings

    def keys_for_identifier(self, token: str) -> list[str]:
        """``system|value`` or ``value`` (the HMAC covers the value only)."""
        if self._key is None:
            return []
        value = token.rsplit("|", 1)[-1]
        return [self._key(value)] if value else []

    def search(self, keys: list[str], *, count: int, offset: int = 0) -> SearchPage:
        """The patient's reports `offset` .. `offset` + `count` (newest first), and whether
        there are more after them."""
        indexed = self._index.for_patient(keys, limit=offset + count + 1)
        out = []
        for item in indexed[offset : offset + count]:
            resource = self._source.read(item.report_id)
            if resource is not None:
                out.append(FoundReport(item, resource))
        return SearchPage(found=out, more=len(indexed) > offset + count)


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page of a search: its reports and whether a next page has some."""

    found: list[FoundReport]
    more: bool


def searchset(
    found: list[FoundReport],
    *,
    base_url: str,
    self_url: str,
    warnings: list[str],
    next_url: str | None = None,
    offset: int = 0,
) -> dict[str, Any]:
    """A FHIR R4 searchset Bundle of the reports (``search.mode`` match) and, when there are
    warnings, an OperationOutcome entry (``search.mode`` outcome). With `next_url` (more
    reports after this page) a ``next`` link and no ``total`` (not counted); on the last page
    ``total`` = `offset` + the reports on it."""
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"{base_url}/DiagnosticReport/{f.resource.get('id', f.indexed.report_id)}",
            "resource": f.resource,
            "search": {"mode": "match"},
        }
        for f in found
    ]
    if warnings:
        entries.append(
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {"severity": "warning", "code": "incomplete", "diagnostics": w}
                        for w in warnings
                    ],
                },
                "search": {"mode": "outcome"},
            }
        )
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if next_url is None:
        bundle["total"] = offset + len(found)
    bundle["link"] = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        bundle["link"].append({"relation": "next", "url": next_url})
    bundle["entry"] = entries
    return bundle


def store_from_settings(
    inbox: Inbox, *, patient_key: Callable[[str], str] | None, settings: Settings
) -> ReportStore | None:
    """Reports read back from where the worker writes them: the FHIR server, or the ndjson
    sink. None when they go out as HL7 v2 result messages only (nothing to read back)."""
    mode = settings.writeback_mode
    if mode == "hl7v2":
        return None
    source: ReportSource
    if settings.fhir_base_url and mode != "ndjson":
        source = FhirReportSource(
            FhirReader(settings.fhir_base_url, timeout_s=settings.fhir_timeout_s, auth=smart_auth())
        )
    else:
        source = NdjsonReportSource(settings.out_dir)
    ehr = settings.effective_ehr_base_url
    patients = (
        None if not ehr else FhirReader(ehr, timeout_s=settings.fhir_timeout_s, auth=smart_auth())
    )
    return ReportStore(
        index=ReportIndex.for_inbox(inbox),
        source=source,
        patient_key=patient_key,
        patients=patients,
    )


# --- the HTTP routes ---------------------------------------------------------------------


def _outcome(status: int, code: str, text: str, severity: str = "error") -> JSONResponse:
    return JSONResponse(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": text}],
        },
        status_code=status,
        media_type=FHIR_JSON,
    )


def _patient_ref(value: str) -> str | None:
    """``Patient/<id>``, ``<id>`` or ``[base]/Patient/<id>`` -> ``Patient/<id>``."""
    pid = value.rsplit("Patient/", 1)[-1] if "Patient/" in value else value
    return f"Patient/{pid}" if FHIR_ID.match(pid) else None


def _subject_of(report: dict[str, Any]) -> PatientRef | None:
    subject = report.get("subject")
    if not isinstance(subject, dict):
        return None
    ident = subject.get("identifier") or {}
    value = ident.get("value") or subject.get("reference")
    if not isinstance(value, str):
        return None
    return PatientRef(identifier=value, system=str(ident.get("system") or ""))


def make_report_router(
    store: ReportStore | None,
    *,
    dependencies: Sequence[Any] = (),
    audit: Auditor | None = None,
) -> APIRouter:
    """``GET /fhir/DiagnosticReport/{id}`` (read) and ``GET /fhir/DiagnosticReport`` (search
    by ``subject`` / ``patient`` = ``Patient/<id>``, or ``subject:identifier`` /
    ``patient:identifier`` = ``[system|]value``; newest first, ``_count`` (default 50, at most
    200) per page, a ``next`` link (``_offset``) while there are more). Each
    report returned is audited as ``report.read``. Without a store (reports leave as HL7 v2
    only) both answer 501."""
    router = APIRouter(prefix="/fhir/DiagnosticReport", dependencies=list(dependencies))

    def _audited(request: Request, found: FoundReport, interaction: str) -> None:
        if audit is None:
            return
        client = request.client.host if request.client else "unknown"
        try:
            audit.append(
                AuditEvent(
                    kind=EventKind.REPORT_READ,
                    actor=f"http:{client}",
                    patient=_subject_of(found.resource),
                    ecg_id=found.indexed.ecg_id,
                    resource=f"DiagnosticReport/{found.indexed.report_id}",
                    detail={"interaction": interaction},
                )
            )
        except AuditError:
            log.exception("audit append failed for a report read")

    def _unavailable(exc: Exception) -> JSONResponse:
        log.warning("report read failed: %s", exc)
        return _outcome(503, "transient", f"the report store is unavailable ({exc}); retry")

    @router.get("/{report_id}")
    async def read_report(report_id: str, request: Request) -> Response:
        if store is None:
            return _outcome(501, "not-supported", "reports are sent as HL7 v2 only; no read")
        try:
            found = await anyio.to_thread.run_sync(store.read, report_id)
        except (InboxError, EhrUnavailableError) as exc:
            return _unavailable(exc)
        if found is None:
            return _outcome(404, "not-found", f"no DiagnosticReport {report_id} from ecgbridge")
        _audited(request, found, "read")
        return JSONResponse(found.resource, media_type=FHIR_JSON)

    @router.get("")
    async def search_reports(request: Request) -> Response:
        if store is None:
            return _outcome(501, "not-supported", "reports are sent as HL7 v2 only; no search")
        q = request.query_params
        try:
            count = min(int(q.get("_count", DEFAULT_COUNT)), MAX_COUNT)
        except ValueError:
            return _outcome(400, "invalid", "_count must be an integer")
        if count < 0:
            return _outcome(400, "invalid", "_count must not be negative")
        try:
            offset = int(q.get("_offset", 0))
        except ValueError:
            return _outcome(400, "invalid", "_offset must be an integer")
        if not 0 <= offset <= MAX_OFFSET:
            return _outcome(400, "invalid", f"_offset must be between 0 and {MAX_OFFSET}")
        keys: list[str] = []
        warnings: list[str] = []
        subjects = [v for name in ("subject", "patient") for v in q.getlist(name)]
        identifiers = [
            v for name in ("subject:identifier", "patient:identifier") for v in q.getlist(name)
        ]
        if not subjects and not identifiers:
            return _outcome(
                400,
                "required",
                "search DiagnosticReports by subject or patient (Patient/<id>), or by "
                "subject:identifier / patient:identifier",
            )
        if not store.searchable:
            return _outcome(501, "not-supported", "no patient search key is configured")
        try:
            for value in subjects:
                ref = _patient_ref(value)
                if ref is None:
                    return _outcome(400, "invalid", f"not a Patient reference: {value[:80]}")
                more, warn = await anyio.to_thread.run_sync(store.keys_for_subject, ref)
                keys += more
                warnings += warn
            for token in identifiers:
                keys += store.keys_for_identifier(token)
            page = await anyio.to_thread.run_sync(
                lambda: store.search(keys, count=count, offset=offset)
            )
        except (InboxError, EhrUnavailableError) as exc:
            return _unavailable(exc)
        for f in page.found:
            _audited(request, f, "search")
        base = str(request.base_url).rstrip("/") + "/fhir"
        next_url = None
        if page.more and count > 0 and offset + count <= MAX_OFFSET:
            next_url = str(request.url.include_query_params(_count=count, _offset=offset + count))
        return JSONResponse(
            searchset(
                page.found,
                base_url=base,
                self_url=str(request.url),
                warnings=warnings,
                next_url=next_url,
                offset=offset,
            ),
            media_type=FHIR_JSON,
        )

    return router
