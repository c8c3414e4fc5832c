"""CDS Hooks 2.0 service: discovery, ``patient-view`` and ``order-select`` cards from the
patient's latest ECG analysis, and the feedback endpoint (HL7 CDS Hooks 2.0, STU2).

* ``GET /cds-services``: the discovery document.
* ``POST /cds-services/ecg-triage-patient-view`` (hook ``patient-view``): one card about the
  patient's latest ECG analysis, or no card when there is none.
* ``POST /cds-services/ecg-triage-order-select`` (hook ``order-select``): the same card when
  the clinician selects a cardiology order (a ServiceRequest coded as coronary angiography or
  a cardiology referral, or in the cardiology category); for a triage-positive ECG and an
  order that is not STAT, a suggestion to update its priority to STAT.
* ``POST /cds-services/{id}/feedback``: accepted / overridden cards, override reasons; every
  entry is an audit event (``cds.feedback``, ``override`` set for overrides, with the card's
  finding and model version so the fairness monitor can count overrides per group).

Errors: 400 for a body that is not a CDS Hooks request (no ``hook``/``hookInstance``, wrong
hook, no ``context.patientId``, malformed feedback), 404 for an unknown service, 412 when the
``patient`` prefetch is neither sent nor fetchable (this service does not query the EHR).
Error bodies are ``{"error": ..., "description": ...}``.

Cards are built from `StoredAnalysis`, found through a `LatestAnalysis` lookup the caller
gives (the inbox implements it). Decision support, not a diagnosis: every card says so.
"""

# No `from __future__ import annotations`: FastAPI reads the live annotations.

import json
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inference.errors import EcgBridgeError
from inference.result import TERRITORY_VESSEL, AnalysisResult
from integration.audit import AuditEvent, EventKind, Outcome, PatientRef
from integration.auditing import Auditor
from mappers.explanation_text import explanation_summary, fairness_summary
from mappers.fhir_json import SNOMED, resource_json

log = logging.getLogger(__name__)

PATIENT_VIEW_ID = "ecg-triage-patient-view"
ORDER_SELECT_ID = "ecg-triage-order-select"
#: Namespace of the deterministic card uuids (uuid5 of service, ECG and report).
CARD_NAMESPACE = uuid.UUID("6b0d5c1e-3f7a-4c51-9a3e-0e8f6d2b7c41")
OVERRIDE_REASON_SYSTEM = "urn:ecgbridge:cds-override-reason"
DISCLAIMER = "AI decision support, not a diagnosis: read with the patient and the ECG."
#: SNOMED CT codes that make a ServiceRequest a cardiology order for ``order-select``.
CARDIOLOGY_ORDER_CODES: frozenset[str] = frozenset(
    {
        "33367005",  # Angiography of coronary artery (procedure)
        "183519002",  # Referral to cardiology service (procedure)
        "41976001",  # Cardiac catheterization (procedure)
    }
)
CARDIOLOGY_CATEGORY = "394579002"  # Cardiology (qualifier value)
_VESSEL_TERRITORY = {v: t for t, v in TERRITORY_VESSEL.items()}


# --- the lookup the caller implements ------------------------------------------------


@dataclass(frozen=True, slots=True)
class PatientKey:
    """Who the CDS client asks about: the FHIR reference (``Patient/<context.patientId>``)
    and the identifiers of the prefetched Patient (``(system, value)``, e.g. the MRN that
    HL7 v2 senders use)."""

    reference: str
    identifiers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class TerritoryCall:
    territory: str
    vessel: str
    probability: float
    positive: bool


@dataclass(frozen=True, slots=True)
class StoredAnalysis:
    """A finished analysis as the inbox keeps it: enough for a card, no waveform.

    ``triage_probability`` is None when the quality gate refused the ECG. ``explanation`` is
    the main explanation sentence once the explanation stage has run ("ST elevation in
    V2-V4 drove the call"); ``report_image_url`` the rendered report picture, when there is
    one. ``patient`` is the audit log's patient reference (encrypted there, never logged).
    """

    ecg_id: str
    model_version: str
    report_ref: str | None
    analysed_at: datetime | None
    triage_probability: float | None
    triage_threshold: float | None
    triage_uncertain: bool = False
    territories: tuple[TerritoryCall, ...] = ()
    quality_problems: tuple[str, ...] = ()
    explanation: str | None = None
    report_image_url: str | None = None
    patient: PatientRef | None = None

    @property
    def analysed(self) -> bool:
        return self.triage_probability is not None

    @property
    def triage_positive(self) -> bool:
        p, t = self.triage_probability, self.triage_threshold
        return p is not None and t is not None and p >= t

    @property
    def finding(self) -> str:
        """The audit log's finding vocabulary (`integration.auditing.analysis_finished`)."""
        if not self.analysed:
            return "not-analysed"
        return "triage-positive" if self.triage_positive else "triage-negative"

    @classmethod
    def from_result(
        cls,
        result: AnalysisResult,
        *,
        ecg_id: str,
        report_ref: str | None,
        explanation: str | None = None,
        report_image_url: str | None = None,
        patient: PatientRef | None = None,
    ) -> "StoredAnalysis":
        tri = result.triage
        return cls(
            ecg_id=ecg_id,
            model_version=result.model_version,
            report_ref=report_ref,
            analysed_at=result.analysed_at,
            triage_probability=None if tri is None else tri.probability,
            triage_threshold=None if tri is None else tri.threshold,
            triage_uncertain=result.uncertain,
            territories=tuple(
                TerritoryCall(t.territory, t.vessel, t.probability, t.positive)
                for t in result.territories
            ),
            quality_problems=result.quality.problems,
            explanation=explanation,
            report_image_url=report_image_url,
            patient=patient,
        )

    @classmethod
    def from_result_json(
        cls,
        text: str,
        *,
        ecg_id: str,
        report_ref: str | None,
        analysed_at: datetime | None,
        report_image_url: str | None = None,
        patient: PatientRef | None = None,
    ) -> "StoredAnalysis":
        """From the inbox's ``result_json`` (`AnalysisResult.to_json()` plus timings; an
        ``explanation`` key, a string or an object with ``summary``, when present)."""
        body = json.loads(text)
        tri = body.get("triage") or None
        territory = body.get("territory") or {}
        positive = set(body.get("territory_positive") or ())
        expl = body.get("explanation")
        if isinstance(expl, Mapping):
            expl = expl.get("summary") or explanation_summary(expl)
        fair = fairness_summary(body.get("fairness"))
        if fair:
            expl = f"{expl} {fair}" if isinstance(expl, str) and expl else fair
        return cls(
            ecg_id=ecg_id,
            model_version=str(body.get("model_version") or ""),
            report_ref=report_ref,
            analysed_at=analysed_at,
            triage_probability=None if tri is None else float(tri["probability"]),
            triage_threshold=None if tri is None else float(tri["threshold"]),
            triage_uncertain=bool(tri and tri.get("uncertain")),
            territories=tuple(
                TerritoryCall(_VESSEL_TERRITORY.get(v, v), v, float(p), v in positive)
                for v, p in territory.items()
            ),
            quality_problems=tuple((body.get("quality") or {}).get("problems") or ()),
            explanation=expl if isinstance(expl, str) and expl else None,
            report_image_url=report_image_url,
            patient=patient,
        )


LatestAnalysis = Callable[[PatientKey], StoredAnalysis | None]


# --- cards (CDS Hooks 2.0 response objects) ---------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Coding(_Wire):
    code: str
    system: str | None = None
    display: str | None = None


class Source(_Wire):
    label: str
    url: str | None = None
    topic: Coding | None = None


class Link(_Wire):
    label: str
    url: str
    type: Literal["absolute", "smart"] = "absolute"


class Action(_Wire):
    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resourceId: list[str] | None = None  # noqa: N815 - CDS Hooks field name


class Suggestion(_Wire):
    label: str
    uuid: str
    isRecommended: bool | None = None  # noqa: N815
    actions: list[Action] = Field(default_factory=list)


class Card(_Wire):
    uuid: str
    summary: str = Field(max_length=140)
    indicator: Literal["info", "warning", "critical"]
    source: Source
    detail: str | None = None
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None  # noqa: N815
    overrideReasons: list[Coding] | None = None  # noqa: N815
    links: list[Link] | None = None


OVERRIDE_REASONS: tuple[Coding, ...] = (
    Coding(system=OVERRIDE_REASON_SYSTEM, code="disagree", display="Disagree with the finding"),
    Coding(system=OVERRIDE_REASON_SYSTEM, code="already-managed", display="Already managed"),
    Coding(system=OVERRIDE_REASON_SYSTEM, code="poor-quality", display="ECG quality too poor"),
    Coding(system=OVERRIDE_REASON_SYSTEM, code="other", display="Other reason"),
)


def card_uuid(service_id: str, analysis: StoredAnalysis) -> str:
    """Deterministic: the same analysis gives the same card, so feedback finds it."""
    name = f"{service_id}|{analysis.ecg_id}|{analysis.report_ref or ''}"
    return str(uuid.uuid5(CARD_NAMESPACE, name))


def _summary(a: StoredAnalysis) -> str:
    if not a.analysed or a.triage_probability is None:
        return "ECG AI: latest ECG not analysed (signal quality); review the tracing"
    pct = f"{a.triage_probability:.0%}"
    if a.triage_positive:
        vessels = "/".join(t.vessel for t in a.territories if t.positive)
        where = f", suspected {vessels} territory" if vessels else ""
        return f"ECG AI: acute MI / injury pattern likely ({pct}){where}: urgent review"
    return f"ECG AI: no acute MI / injury pattern detected ({pct})"


def _indicator(a: StoredAnalysis) -> Literal["info", "warning", "critical"]:
    if a.triage_positive:
        return "critical"
    if not a.analysed or a.triage_uncertain:
        return "warning"
    return "info"


def _detail(a: StoredAnalysis) -> str:
    lines: list[str] = []
    if a.triage_probability is None or a.triage_threshold is None:
        problems = "; ".join(a.quality_problems) or "signal quality insufficient"
        lines.append(f"**Not analysed:** {problems}.")
    else:
        verdict = "LIKELY" if a.triage_positive else "not detected"
        lines.append(
            f"**Acute MI / injury pattern {verdict}** (probability {a.triage_probability:.0%},"
            f" decision threshold {a.triage_threshold:.0%})."
        )
        pos = [t for t in a.territories if t.positive]
        if pos:
            terr = ", ".join(f"{t.territory} ({t.vessel}) {t.probability:.0%}" for t in pos)
            lines.append(f"**Suspected culprit territory:** {terr}.")
        elif a.territories:
            lines.append("**Territory:** none above its threshold.")
        if a.triage_uncertain:
            lines.append("**Uncertain:** the model's ensemble members disagree about this call.")
        if not a.triage_positive:
            lines.append("A negative result does not rule out MI.")
    expl = a.explanation or "not available yet (explanations follow the triage result)"
    lines.append(f"**Main explanation:** {expl}.".replace("..", "."))
    when = f", analysed {a.analysed_at.isoformat(timespec='seconds')}" if a.analysed_at else ""
    lines.append(f"Model {a.model_version}{when}. {DISCLAIMER}")
    return "\n\n".join(lines)


def _links(a: StoredAnalysis, report_base_url: str | None) -> list[Link]:
    links: list[Link] = []
    if a.report_image_url:
        links.append(Link(label="ECG report picture", url=a.report_image_url))
    if a.report_ref and report_base_url:
        links.append(Link(label="ECG report", url=f"{report_base_url.rstrip('/')}/{a.report_ref}"))
    return links


def _consult_request(patient_ref: str, a: StoredAnalysis) -> dict[str, Any]:
    """A STAT cardiology referral (draft proposal), validated as R4."""
    data: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "priority": "stat",
        "code": {
            "coding": [
                {"system": SNOMED, "code": "183519002", "display": "Referral to cardiology service"}
            ],
            "text": "Urgent cardiology review: AI ECG triage positive",
        },
        "subject": {"reference": patient_ref},
        "reasonCode": [{"text": _summary(a)}],
    }
    if a.report_ref:
        data["reasonReference"] = [{"reference": a.report_ref.split("/_history/")[0]}]
    return resource_json(ServiceRequest.model_validate(data))


def build_card(
    analysis: StoredAnalysis,
    *,
    service_id: str,
    patient_ref: str,
    report_base_url: str | None = None,
    source_url: str | None = None,
    suggestions: Sequence[Suggestion] | None = None,
) -> Card:
    """The card for one analysis (pure). With ``suggestions`` None, a triage-positive ECG
    gets a STAT cardiology referral suggestion; pass a sequence to choose them."""
    uid = card_uuid(service_id, analysis)
    sugg = list(suggestions or ())
    if suggestions is None and analysis.triage_positive:
        sugg = [
            Suggestion(
                label="Request STAT cardiology review",
                uuid=str(uuid.uuid5(CARD_NAMESPACE, uid + "|consult")),
                isRecommended=True,
                actions=[
                    Action(
                        type="create",
                        description="STAT referral to cardiology (AI ECG triage positive)",
                        resource=_consult_request(patient_ref, analysis),
                    )
                ],
            )
        ]
    links = _links(analysis, report_base_url)
    return Card(
        uuid=uid,
        summary=_summary(analysis),
        indicator=_indicator(analysis),
        detail=_detail(analysis),
        source=Source(label="ecgbridge ECG decision support", url=source_url),
        suggestions=sugg or None,
        selectionBehavior="at-most-one" if sugg else None,
        overrideReasons=list(OVERRIDE_REASONS),
        links=links or None,
    )


# --- requests -------------------------------------------------------------------------


class CdsRequestError(EcgBridgeError, ValueError):
    """A CDS Hooks request the service cannot answer: 400 (malformed, missing context),
    412 (the prefetch it needs is missing), 404 (unknown service)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class HookRequest(_Wire):
    hook: str
    hookInstance: str  # noqa: N815
    context: dict[str, Any]
    fhirServer: str | None = None  # noqa: N815
    prefetch: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ServiceDef:
    id: str
    hook: str
    title: str
    description: str
    prefetch: Mapping[str, str]

    def discovery(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": dict(self.prefetch),
            "usageRequirements": "Send the patient prefetch; cards come from ECGs ecgbridge "
            "has already analysed for this patient.",
        }


SERVICES: tuple[ServiceDef, ...] = (
    ServiceDef(
        id=PATIENT_VIEW_ID,
        hook="patient-view",
        title="ECG AI triage (acute MI / occlusion)",
        description="The patient's latest AI ECG triage: acute MI / injury likelihood, culprit "
        "territory, main explanation and a link to the report. Decision support only.",
        prefetch={"patient": "Patient/{{context.patientId}}"},
    ),
    ServiceDef(
        id=ORDER_SELECT_ID,
        hook="order-select",
        title="ECG AI triage for cardiology orders",
        description="When a cardiology order (coronary angiography, cardiology referral) is "
        "selected: the patient's latest AI ECG triage, and a STAT suggestion when positive.",
        prefetch={"patient": "Patient/{{context.patientId}}"},
    ),
)


def parse_hook_request(body: bytes, service: ServiceDef) -> tuple[HookRequest, PatientKey]:
    """Validate a hook call (pure). Raises `CdsRequestError` (400 / 412)."""
    try:
        req = HookRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise CdsRequestError(f"not a CDS Hooks request: {where}: {first['msg']}") from None
    if req.hook != service.hook:
        raise CdsRequestError(f"service {service.id} answers {service.hook}, not {req.hook}")
    pid = req.context.get("patientId")
    if not isinstance(pid, str) or not pid:
        raise CdsRequestError("context.patientId is required")
    if service.hook == "order-select":
        sel, drafts = req.context.get("selections"), req.context.get("draftOrders")
        if not isinstance(sel, list) or not isinstance(drafts, Mapping):
            raise CdsRequestError("order-select needs context.selections and draftOrders")
    patient = (req.prefetch or {}).get("patient")
    if not isinstance(patient, Mapping) or patient.get("resourceType") != "Patient":
        raise CdsRequestError(
            "prefetch.patient (Patient/{{context.patientId}}) is required; this service "
            "does not query the FHIR server",
            status=412,
        )
    if patient.get("id") not in (None, pid):
        raise CdsRequestError("prefetch.patient.id does not match context.patientId")
    idents = tuple(
        (str(i.get("system") or ""), str(i["value"]))
        for i in patient.get("identifier") or ()
        if isinstance(i, Mapping) and i.get("value")
    )
    return req, PatientKey(reference=f"Patient/{pid}", identifiers=idents)


def _codes(concept: Any) -> set[str]:
    if not isinstance(concept, Mapping):
        return set()
    return {str(c.get("code")) for c in concept.get("coding") or () if isinstance(c, Mapping)}


def selected_cardiology_orders(context: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The selected draft ServiceRequests that are cardiology orders (pure)."""
    selections = set(context.get("selections") or ())
    out: list[dict[str, Any]] = []
    for entry in (context.get("draftOrders") or {}).get("entry") or ():
        res = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(res, Mapping) or res.get("resourceType") != "ServiceRequest":
            continue
        if f"ServiceRequest/{res.get('id')}" not in selections:
            continue
        cats = set().union(*(_codes(c) for c in res.get("category") or ()))
        if _codes(res.get("code")) & CARDIOLOGY_ORDER_CODES or CARDIOLOGY_CATEGORY in cats:
            out.append(dict(res))
    return out


def _stat_suggestion(order: dict[str, Any], uid: str) -> Suggestion:
    updated = resource_json(ServiceRequest.model_validate(order | {"priority": "stat"}))
    return Suggestion(
        label="Make this cardiology order STAT",
        uuid=str(uuid.uuid5(CARD_NAMESPACE, f"{uid}|stat|{order.get('id')}")),
        isRecommended=True,
        actions=[
            Action(
                type="update",
                description="Set the order's priority to STAT (AI ECG triage positive)",
                resource=updated,
            )
        ],
    )


# --- feedback -------------------------------------------------------------------------


class OverrideReason(_Wire):
    reason: Coding | None = None
    userComment: str | None = None  # noqa: N815


class AcceptedSuggestion(_Wire):
    id: str


class FeedbackEntry(_Wire):
    card: str
    outcome: Literal["accepted", "overridden"]
    outcomeTimestamp: datetime  # noqa: N815
    acceptedSuggestions: list[AcceptedSuggestion] | None = None  # noqa: N815
    overrideReason: OverrideReason | None = None  # noqa: N815


class FeedbackRequest(_Wire):
    feedback: list[FeedbackEntry] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class IssuedCard:
    """What the service remembers of a card it returned, to attribute feedback."""

    uuid: str
    service_id: str
    ecg_id: str
    finding: str
    model_version: str
    report_ref: str | None
    patient: PatientRef | None


class CardLedger(Protocol):
    def remember(self, card: IssuedCard) -> None: ...

    def find(self, card_uuid: str) -> IssuedCard | None: ...


class MemoryCardLedger:
    """The last ``capacity`` cards issued by this process (thread-safe)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._cards: OrderedDict[str, IssuedCard] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def remember(self, card: IssuedCard) -> None:
        with self._lock:
            self._cards[card.uuid] = card
            self._cards.move_to_end(card.uuid)
            while len(self._cards) > self._capacity:
                self._cards.popitem(last=False)

    def find(self, card_uuid: str) -> IssuedCard | None:
        with self._lock:
            return self._cards.get(card_uuid)


def feedback_event(entry: FeedbackEntry, *, service_id: str, card: IssuedCard | None) -> AuditEvent:
    """The audit event of one feedback entry (pure)."""
    detail: dict[str, str | int | float | bool | None] = {
        "service": service_id,
        "card": entry.card,
        "outcome": entry.outcome,
        "outcome_at": entry.outcomeTimestamp.isoformat(),
        "card_known": card is not None,
    }
    if entry.acceptedSuggestions:
        detail["accepted_suggestions"] = ",".join(s.id for s in entry.acceptedSuggestions)
    reason = entry.overrideReason
    if reason is not None and reason.reason is not None:
        detail["override_reason"] = reason.reason.code
        detail["override_reason_system"] = reason.reason.system
        detail["override_reason_display"] = reason.reason.display
    if reason is not None and reason.userComment:
        detail["override_comment"] = reason.userComment[:500]
    return AuditEvent(
        kind=EventKind.CDS_FEEDBACK,
        actor=f"cds:{service_id}",
        outcome=Outcome.SUCCESS,
        patient=None if card is None else card.patient,
        ecg_id=None if card is None else card.ecg_id,
        resource=None if card is None else card.report_ref,
        model_version=None if card is None else card.model_version,
        finding=None if card is None else card.finding,
        override=entry.outcome == "overridden",
        detail=detail,
    )


# --- router ---------------------------------------------------------------------------


def _error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "description": description}, status_code=status)


_ERROR_NAMES = {400: "bad-request", 404: "not-found", 412: "precondition-failed"}


def make_cds_router(
    *,
    latest: LatestAnalysis,
    audit: Auditor,
    report_base_url: str | None = None,
    source_url: str | None = None,
    ledger: CardLedger | None = None,
    auth: Callable[..., object] | None = None,
) -> APIRouter:
    """The CDS Hooks routes under ``/cds-services``.

    ``latest`` finds the patient's latest analysis; ``report_base_url`` prefixes the
    report reference in the card's link (e.g. the EHR's FHIR base or ecgbridge's own
    ``/fhir``); ``auth`` is a FastAPI dependency run for every route (e.g.
    `integration.smart.require_bearer`), none by default.
    """
    cards_issued = ledger or MemoryCardLedger()
    deps = [Depends(auth)] if auth is not None else []
    router = APIRouter(prefix="/cds-services", dependencies=deps)
    by_id = {s.id: s for s in SERVICES}

    @router.get("")
    def discovery() -> Response:
        return JSONResponse({"services": [s.discovery() for s in SERVICES]})

    @router.post("/{service_id}")
    async def call_service(service_id: str, request: Request) -> Response:
        service = by_id.get(service_id)
        if service is None:
            return _error(404, "not-found", f"no CDS service {service_id!r}")
        try:
            req, patient = parse_hook_request(await request.body(), service)
        except CdsRequestError as exc:
            log.info("CDS %s refused (%d): %s", service_id, exc.status, exc)
            return _error(exc.status, _ERROR_NAMES.get(exc.status, "error"), str(exc))
        orders: list[dict[str, Any]] = []
        if service.hook == "order-select":
            orders = selected_cardiology_orders(req.context)
            if not orders:
                return JSONResponse({"cards": []})
        analysis = latest(patient)
        if analysis is None:
            return JSONResponse({"cards": []})
        uid = card_uuid(service.id, analysis)
        suggestions: list[Suggestion] | None = None
        if service.hook == "order-select":
            suggestions = [
                _stat_suggestion(o, uid)
                for o in orders
                if analysis.triage_positive and o.get("priority") != "stat"
            ]
        card = build_card(
            analysis,
            service_id=service.id,
            patient_ref=patient.reference,
            report_base_url=report_base_url,
            source_url=source_url,
            suggestions=suggestions,
        )
        audited_patient = analysis.patient or PatientRef(identifier=patient.reference)
        cards_issued.remember(
            IssuedCard(
                uuid=card.uuid,
                service_id=service.id,
                ecg_id=analysis.ecg_id,
                finding=analysis.finding,
                model_version=analysis.model_version,
                report_ref=analysis.report_ref,
                patient=audited_patient,
            )
        )
        user = req.context.get("userId")
        audit.append(
            AuditEvent(
                kind=EventKind.CDS_CARD_SHOWN,
                actor=f"cds:{service.id}" + (f":{user}" if isinstance(user, str) else ""),
                patient=audited_patient,
                ecg_id=analysis.ecg_id,
                resource=analysis.report_ref,
                model_version=analysis.model_version,
                finding=analysis.finding,
                detail={
                    "card": card.uuid,
                    "hook_instance": req.hookInstance[:100],
                    "indicator": card.indicator,
                    "suggestions": len(card.suggestions or ()),
                },
            )
        )
        return JSONResponse({"cards": [card.model_dump(mode="json", exclude_none=True)]})

    @router.post("/{service_id}/feedback")
    async def feedback(service_id: str, request: Request) -> Response:
        if service_id not in by_id:
            return _error(404, "not-found", f"no CDS service {service_id!r}")
        try:
            body = FeedbackRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return _error(400, "bad-request", f"not CDS Hooks feedback: {where}: {first['msg']}")
        for entry in body.feedback:
            audit.append(
                feedback_event(entry, service_id=service_id, card=cards_issued.find(entry.card))
            )
        return JSONResponse({}, status_code=200)

    return router
