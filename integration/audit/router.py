"""HTTP surface of the audit log (FastAPI): ``GET /audit/AuditEvent`` (FHIR searchset
Bundle of AuditEvents) and the reviewer's pages under ``/audit/review``.

Every route needs a reviewer. `bearer_reviewers` is the placeholder dependency (static
bearer tokens, or the same token in an HttpOnly cookie set by the login form); the
security work replaces it with JWT by passing another ``reviewer`` dependency. Every read
is itself audited (``audit.viewed`` / ``audit.exported``).
"""

# No `from __future__ import annotations` here: FastAPI resolves the local `Who` alias
# from the live annotations.

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from integration.audit.events import AuditEvent, EventKind
from integration.audit.export import describe, to_fhir
from integration.audit.log import AuditLog
from integration.audit.picture import EcgImage, inbox_picture
from integration.audit.review import ReviewPages
from integration.audit.store import SearchQuery, SqlStore

FHIR_JSON = "application/fhir+json"
COOKIE = "ecgbridge_reviewer"
REVIEWER_ROLE = "audit-reviewer"


@dataclass(frozen=True, slots=True)
class Reviewer:
    name: str
    roles: frozenset[str]


ReviewerDependency = Callable[..., Reviewer]


def bearer_reviewers(tokens: Mapping[str, str]) -> ReviewerDependency:
    """A dependency accepting ``Authorization: Bearer TOKEN`` or the login cookie, where
    TOKEN is one of ``tokens`` (token -> reviewer name). 401 otherwise."""

    def reviewer(request: Request) -> Reviewer:
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        token = token or request.cookies.get(COOKIE, "")
        for known, name in tokens.items():
            if token and hmac.compare_digest(token.encode(), known.encode()):
                return Reviewer(name, frozenset({REVIEWER_ROLE}))
        raise HTTPException(
            401, "reviewer credentials required", headers={"WWW-Authenticate": "Bearer"}
        )

    return reviewer


def _date_filters(values: list[str]) -> tuple[datetime | None, datetime | None]:
    since = until = None
    for v in values:
        prefix, rest = (v[:2], v[2:]) if v[:2] in ("ge", "le", "gt", "lt", "eq") else ("eq", v)
        when = datetime.fromisoformat(rest)
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        if prefix in ("ge", "gt", "eq"):
            since = when
        if prefix in ("le", "lt", "eq"):
            until = when
    return since, until


def make_audit_router(
    audit: AuditLog,
    *,
    reviewer: ReviewerDependency,
    ecg_image: EcgImage | None = None,
) -> APIRouter:
    """The audit routes. ``reviewer`` is a FastAPI dependency returning the `Reviewer`
    (raise 401/403 inside it); the role ``audit-reviewer`` is required. ``ecg_image``
    renders an ECG by id for the report view; by default the inbox in the audit log's own
    database (``ECGBRIDGE_DATABASE_URL`` holds both) is drawn (`inbox_picture`)."""
    store = getattr(audit, "store", None)  # twins in other tests may have none
    if ecg_image is None and isinstance(store, SqlStore):
        from integration.inbox import Inbox

        ecg_image = inbox_picture(Inbox(store.engine, cipher=audit.cipher))
    router = APIRouter(prefix="/audit")
    pages = ReviewPages(audit)

    def require(who: Annotated[Reviewer, Depends(reviewer)]) -> Reviewer:
        if REVIEWER_ROLE not in who.roles:
            raise HTTPException(403, "the audit-reviewer role is required")
        return who

    Who = Annotated[Reviewer, Depends(require)]

    def note(who: Reviewer, kind: EventKind, **detail: Any) -> None:
        audit.append(AuditEvent(kind=kind, actor=f"reviewer:{who.name}", detail=detail))

    @router.get("/AuditEvent")
    def search_auditevents(
        who: Who,
        patient: str | None = None,
        date: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI query list
        subtype: str | None = None,
        model_version: Annotated[str | None, Query(alias="model-version")] = None,
        finding: str | None = None,
        override: bool | None = None,
        count: Annotated[int, Query(alias="_count", ge=1, le=1000)] = 100,
    ) -> Response:
        try:
            since, until = _date_filters(date)
        except ValueError:
            return JSONResponse(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "error",
                            "code": "invalid",
                            "diagnostics": "bad date",
                            "expression": ["date"],
                        }
                    ],
                },
                status_code=400,
                media_type=FHIR_JSON,
            )
        q = SearchQuery(
            patient_key=None if patient is None else audit.patient_key(patient.split("|")[-1]),
            since=since,
            until=until,
            kinds=(subtype,) if subtype else (),
            model_version=model_version,
            finding=finding,
            override=override,
            limit=count,
        )
        events = audit.search(q)
        entries = [
            {
                "fullUrl": f"AuditEvent/audit-{e.index}",
                "search": {"mode": "match"},
                "resource": to_fhir(e).model_dump(mode="json", exclude_none=True),
            }
            for e in events
        ]
        note(who, EventKind.AUDIT_EXPORTED, count=len(events), filter=describe(q), via="api")
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(entries),
            "entry": entries,
        }
        return JSONResponse(bundle, media_type=FHIR_JSON)

    @router.get("/review/login", response_class=HTMLResponse)
    def login_form() -> str:
        return pages.login()

    @router.post("/review/login")
    async def login(request: Request) -> Response:
        # parsed here rather than with Form(): no python-multipart dependency for one field
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0]
        resp = RedirectResponse("/audit/review", status_code=303)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/audit")
        return resp

    @router.get("/review", response_class=HTMLResponse)
    def review(
        who: Who,
        patient: str = "",
        since: str = "",
        until: str = "",
        finding: str = "",
        model_version: str = "",
        override: str = "",
    ) -> str:
        q = SearchQuery(
            patient_key=audit.patient_key(patient) if patient.strip() else None,
            since=_date_filters([f"ge{since}"])[0] if since else None,
            until=_date_filters([f"le{until}T23:59:59.999"])[1] if until else None,
            kinds=(EventKind.ANALYSIS_FINISHED.value, EventKind.CDS_FEEDBACK.value)
            if override
            else (EventKind.ANALYSIS_FINISHED.value,),
            finding=finding or None,
            model_version=model_version or None,
            override=True if override else None,
            limit=200,
        )
        searched = any((patient, since, until, finding, model_version, override))
        results = audit.search(q) if searched else []
        if searched:
            note(who, EventKind.AUDIT_VIEWED, page="search", filter=describe(q), count=len(results))
        form = {
            "patient": patient,
            "since": since,
            "until": until,
            "finding": finding,
            "model_version": model_version,
            "override": override,
        }
        return pages.search(who.name, form, results, searched=searched)

    @router.get("/review/ecg/{ecg_id}", response_class=HTMLResponse)
    def ecg_report(who: Who, ecg_id: str) -> str:
        events = audit.search(SearchQuery(ecg_id=ecg_id, newest_first=False, limit=500))
        if not events:
            raise HTTPException(404, "no audit entries for this ECG")
        note(who, EventKind.AUDIT_VIEWED, page="ecg", ecg_id=ecg_id)
        return pages.ecg(who.name, ecg_id, events, has_image=ecg_image is not None)

    @router.get("/review/ecg/{ecg_id}/image")
    def ecg_picture(who: Who, ecg_id: str) -> Response:
        found = ecg_image(ecg_id) if ecg_image is not None else None
        note(who, EventKind.AUDIT_VIEWED, page="ecg-image", ecg_id=ecg_id, found=found is not None)
        if found is None:
            raise HTTPException(404, "no rendered ECG for this id")
        content, media_type = found
        return Response(
            content, media_type=media_type, headers={"Cache-Control": "private, no-store"}
        )

    return router
