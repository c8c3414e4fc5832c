"""FHIR Subscriptions R5 Backport IG (STU 1.1, R4 profiles), rest-hook notifications -> intake.

A notification is a ``history`` Bundle whose first entry is a ``Parameters`` resource
(profile ``backport-subscription-status-r4``): ``subscription`` (valueReference), ``topic``
(valueCanonical), ``type`` (``handshake`` | ``heartbeat`` | ``event-notification`` | ...),
``events-since-subscription-start`` and one ``notification-event`` per event whose ``focus``
part references the resource that triggered it. Payload content ``id-only`` sends only the
focus references; ``full-resource`` adds the resources as further entries.

What ecgbridge does with one (`SubscriptionReceiver.receive`):

* the topic must be one of ``ECGBRIDGE_SUBSCRIPTION_TOPICS``; otherwise `UnknownTopicError`
  (422 OperationOutcome naming the topic, audited as a refused ``message.received``);
* ``handshake`` / ``heartbeat``: acknowledged, nothing queued;
* ``event-notification``: each ``Observation`` focus is taken from the Bundle when it is
  there, else read from the EHR (`FhirReader`, only references relative to or within the
  configured EHR base: another host is never contacted), with its subject Patient for the
  demographics; then handed to `IngestService.receive_fhir` as a one-ECG collection Bundle,
  so it gets the inbox, the idempotency key (a re-sent notification queues nothing new) and
  the audit entry of any other FHIR intake. A focus that cannot be taken (404 at the EHR,
  not an ECG, another host) is reported as an issue; the others are still processed. An
  EHR that cannot be reached raises `EhrUnavailableError` (503, so the EHR retries).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import anyio
import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fhir.resources.R4B.parameters import Parameters

from inference.errors import EcgBridgeError
from integration import auditing
from integration.audit import AuditError, AuditEvent, Outcome
from integration.auditing import Auditor
from integration.errors import DuplicateConflictError, InboxError
from integration.ingest import FhirAccepted, IngestService
from integration.settings import Settings
from integration.smart import BackendServicesAuth, TokenError, get_smart_settings
from mappers.errors import FhirResourceError, MappingError
from mappers.fhir_json import validate_resource

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
#: The inbox channel (and audit actor) of ECGs taken in from notifications.
CHANNEL = "subscription"
MAX_NOTIFICATION_BYTES = 64 * 1024 * 1024
STATUS_PROFILE = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
    "backport-subscription-status-r4"
)


class NotificationType(StrEnum):
    HANDSHAKE = "handshake"
    HEARTBEAT = "heartbeat"
    EVENT_NOTIFICATION = "event-notification"
    QUERY_STATUS = "query-status"
    QUERY_EVENT = "query-event"


class UnknownTopicError(MappingError):
    """The notification is for a SubscriptionTopic ecgbridge was not configured to accept.
    FHIR: 422 OperationOutcome ``not-supported`` naming the topic; audited; nothing stored."""

    fhir_issue = "not-supported"


class FocusError(MappingError):
    """One notified focus cannot be taken (not found at the EHR, another host, not an
    Observation). Reported as an issue of the answer; the other foci are still processed."""

    fhir_issue = "not-found"


class EhrUnavailableError(EcgBridgeError, OSError):
    """The EHR's FHIR server could not be reached or answered 5xx/429/408, or no access
    token could be had. FHIR: 503 OperationOutcome ``transient``, so the EHR retries."""


# --- the functional core: reading a notification ------------------------------------------


@dataclass(frozen=True, slots=True)
class Notification:
    """A parsed notification: its SubscriptionStatus parameters and the resources it carries
    (``full-resource`` payloads), keyed by fullUrl and by ``Type/id``."""

    subscription: str
    topic: str
    type: NotificationType
    events_since_start: str | None
    focus: tuple[str, ...]
    included: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def _value(param: Mapping[str, Any]) -> Any:
    for key, val in param.items():
        if key.startswith("value"):
            return val
    return None


def _reference(value: Any) -> str | None:
    if isinstance(value, Mapping):
        ref = value.get("reference")
        return ref if isinstance(ref, str) and ref else None
    return value if isinstance(value, str) and value else None


def parse_notification(obj: Any) -> Notification:
    """A Subscriptions Backport R4 notification Bundle -> `Notification`.

    Raises `FhirResourceError` (422) naming the element when it is not one.
    """
    if not isinstance(obj, Mapping) or obj.get("resourceType") != "Bundle":
        raise FhirResourceError(
            "a subscription notification is a Bundle (type history)", location="resourceType"
        )
    if obj.get("type") != "history":
        raise FhirResourceError(
            f"a subscription notification Bundle has type history, not {obj.get('type')!r}",
            location="Bundle.type",
        )
    entries = obj.get("entry")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], Mapping):
        raise FhirResourceError(
            "the notification Bundle has no SubscriptionStatus entry", location="Bundle.entry"
        )
    status = entries[0].get("resource")
    if not isinstance(status, Mapping) or status.get("resourceType") != "Parameters":
        raise FhirResourceError(
            "the first entry of a notification must be a Parameters resource "
            "(backport SubscriptionStatus)",
            location="Bundle.entry[0].resource",
        )
    validate_resource(Parameters, status, path="Bundle.entry[0].resource")
    params: dict[str, Any] = {}
    focus: list[str] = []
    for p in status.get("parameter") or []:
        name = p.get("name")
        if name == "notification-event":
            for part in p.get("part") or []:
                if part.get("name") == "focus":
                    ref = _reference(_value(part))
                    if ref is not None:
                        focus.append(ref)
        elif isinstance(name, str):
            params[name] = _value(p)
    where = "Bundle.entry[0].resource.parameter"
    topic = params.get("topic")
    if not isinstance(topic, str) or not topic:
        raise FhirResourceError("the SubscriptionStatus names no topic", location=where)
    subscription = _reference(params.get("subscription"))
    if subscription is None:
        raise FhirResourceError("the SubscriptionStatus names no subscription", location=where)
    try:
        kind = NotificationType(str(params.get("type")))
    except ValueError:
        raise FhirResourceError(
            f"unknown notification type {params.get('type')!r}", location=where
        ) from None
    since = params.get("events-since-subscription-start")
    included: dict[str, Mapping[str, Any]] = {}
    for entry in entries[1:]:
        res = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(res, Mapping):
            continue
        if isinstance(entry.get("fullUrl"), str):
            included[entry["fullUrl"]] = res
        if isinstance(res.get("resourceType"), str) and isinstance(res.get("id"), str):
            included[f"{res['resourceType']}/{res['id']}"] = res
    return Notification(
        subscription=subscription,
        topic=topic,
        type=kind,
        events_since_start=None if since is None else str(since),
        focus=tuple(focus),
        included=included,
    )


def local_path(reference: str, *, base_url: str | None, kind: str) -> str:
    """``Observation/123`` for a relative reference or an absolute one within `base_url`
    (a ``/_history/n`` suffix is kept). Raises `FocusError` for another host or type."""
    ref = reference
    if "://" in ref:
        base = (base_url or "").rstrip("/")
        if not base or not ref.startswith(base + "/"):
            raise FocusError(
                f"{reference} is not on the configured EHR FHIR server; not fetched",
                location="notification-event.focus",
            )
        ref = ref[len(base) + 1 :]
    parts = ref.split("/")
    if len(parts) not in (2, 4) or parts[0] != kind or not parts[1]:
        raise FocusError(
            f"{reference} is not a {kind} reference; ecgbridge takes ECG {kind}s",
            location="notification-event.focus",
        )
    if len(parts) == 4 and parts[2] != "_history":
        raise FocusError(f"{reference}: malformed reference", location="notification-event.focus")
    return ref


# --- the shell: reading from the EHR --------------------------------------------------------


class FhirReader:
    """``GET [base]/[type]/[id]`` on a FHIR R4 server (with SMART Backend Services auth when
    configured). A 404/410 is None; unreachable, 5xx, 408 and 429 raise
    `EhrUnavailableError`; another refusal raises `FocusError`."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        auth: httpx.Auth | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            timeout=timeout_s, auth=auth, transport=transport, headers={"Accept": FHIR_JSON}
        )

    def read(self, path: str) -> dict[str, Any] | None:
        try:
            resp = self._client.get(f"{self.base_url}/{path}")
        except TokenError as exc:
            raise EhrUnavailableError(f"no access token for the EHR: {exc}") from exc
        except httpx.HTTPError as exc:
            raise EhrUnavailableError(f"GET {path} failed: {exc.__class__.__name__}") from exc
        if resp.status_code in (404, 410):
            return None
        if resp.status_code >= 500 or resp.status_code in (408, 429):
            raise EhrUnavailableError(f"GET {path} -> {resp.status_code}")
        if resp.status_code != 200:
            raise FocusError(f"GET {path} -> {resp.status_code} at the EHR")
        try:
            body = resp.json()
        except ValueError:
            raise FocusError(f"GET {path}: the EHR answered no JSON") from None
        if not isinstance(body, dict):
            raise FocusError(f"GET {path}: the EHR answered no resource")
        return body

    def close(self) -> None:
        self._client.close()


def smart_auth() -> BackendServicesAuth | None:
    """SMART Backend Services auth for reads at the EHR, when configured (the scope in
    ``ECGBRIDGE_SMART_SCOPE`` must then also grant ``system/Observation.read`` and
    ``system/Patient.read``)."""
    smart = get_smart_settings()
    if not (smart.smart_token_url and smart.smart_client_id):
        return None
    return BackendServicesAuth(
        token_url=smart.smart_token_url,
        client_id=smart.smart_client_id,
        scope=smart.smart_scope,
        keys=smart.signing_keys(),
    )


# --- the receiver ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FocusIssue:
    """A focus that was not taken, and why (an OperationOutcome issue)."""

    focus: str
    code: str
    text: str
    severity: str = "error"


@dataclass(frozen=True, slots=True)
class NotificationResult:
    notification: Notification
    accepted: tuple[tuple[str, FhirAccepted], ...] = ()
    issues: tuple[FocusIssue, ...] = ()


class SubscriptionReceiver:
    """Takes rest-hook notifications for the accepted topics into the intake."""

    def __init__(
        self,
        *,
        ingest: IngestService,
        topics: frozenset[str],
        reader: FhirReader | None,
        audit: Auditor | None = None,
    ) -> None:
        self._ingest = ingest
        self._topics = topics
        self._reader = reader
        self._audit = audit

    @property
    def topics(self) -> frozenset[str]:
        return self._topics

    def receive(self, body: bytes) -> NotificationResult:
        """Raises `FhirResourceError` / `UnknownTopicError` (422, nothing stored),
        `EhrUnavailableError` (503) and, from the inbox, `InboxError` (503)."""
        try:
            obj = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FhirResourceError(f"the body is not JSON: {exc}") from None
        note = parse_notification(obj)
        if note.topic not in self._topics:
            reason = f"unknown subscription topic {note.topic}"
            self._refused(note.subscription, reason)
            log.warning("notification for %s refused: unknown topic", note.subscription)
            raise UnknownTopicError(
                reason
                + ": this endpoint accepts "
                + (", ".join(sorted(self._topics)) or "no topics (none configured)"),
                location="Bundle.entry[0].resource.parameter.topic",
            )
        if note.type is not NotificationType.EVENT_NOTIFICATION:
            log.info("subscription %s: %s acknowledged", note.subscription, note.type.value)
            return NotificationResult(note)
        if not note.focus:
            raise FhirResourceError(
                "the event notification names no focus (empty payload); configure the "
                "Subscription with content id-only or full-resource",
                location="Bundle.entry[0].resource.parameter.notification-event",
            )
        accepted: list[tuple[str, FhirAccepted]] = []
        issues: list[FocusIssue] = []
        for focus in note.focus:
            try:
                bundle = self._intake_bundle(focus, note, issues)
                for a in self._ingest.receive_fhir(bundle, channel=CHANNEL):
                    accepted.append((focus, a))
            except FocusError as exc:
                issues.append(FocusIssue(focus, exc.fhir_issue, str(exc)))
            except MappingError as exc:
                issues.append(FocusIssue(focus, exc.fhir_issue, f"{focus}: {exc}"))
            except DuplicateConflictError as exc:
                issues.append(FocusIssue(focus, "conflict", f"{focus}: {exc}"))
        for issue in issues:
            if issue.severity == "error":
                self._refused(issue.focus, issue.text)
        return NotificationResult(note, tuple(accepted), tuple(issues))

    def _intake_bundle(self, focus: str, note: Notification, issues: list[FocusIssue]) -> bytes:
        base = None if self._reader is None else self._reader.base_url
        obs = note.included.get(focus)
        if obs is None:
            path = local_path(focus, base_url=base, kind="Observation")
            obs = note.included.get(path) or self._fetch(path, focus)
        elif obs.get("resourceType") != "Observation":
            raise FocusError(f"{focus} is a {obs.get('resourceType')}, not an Observation")
        entries: list[dict[str, Any]] = [{"resource": dict(obs)}]
        patient = self._patient(focus, obs, note, issues)
        if patient is not None:
            entries.append({"resource": dict(patient)})
        bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
        return json.dumps(bundle, sort_keys=True, separators=(",", ":")).encode()

    def _fetch(self, path: str, focus: str) -> Mapping[str, Any]:
        if self._reader is None:
            raise FocusError(f"{focus}: no EHR FHIR base is configured to read it from")
        found = self._reader.read(path)
        if found is None:
            raise FocusError(f"{focus} was not found at the EHR (404)")
        return found

    def _patient(
        self,
        focus: str,
        obs: Mapping[str, Any],
        note: Notification,
        issues: list[FocusIssue],
    ) -> Mapping[str, Any] | None:
        subject = _reference(obs.get("subject"))
        if subject is None or (not subject.startswith("Patient/") and "/Patient/" not in subject):
            return None
        if subject in note.included:
            return note.included[subject]
        base = None if self._reader is None else self._reader.base_url
        try:
            path = local_path(subject, base_url=base, kind="Patient")
        except FocusError:
            path = None
        if path is not None and path in note.included:
            return note.included[path]
        found = None
        if path is not None and self._reader is not None:
            try:
                found = self._reader.read(path)
            except FocusError:  # refused (403, ...): the ECG is still worth analysing
                found = None
        if found is None:
            issues.append(
                FocusIssue(
                    focus,
                    "not-found",
                    f"{focus}: subject {subject} could not be read; analysed without demographics",
                    severity="warning",
                )
            )
        return found

    def _refused(self, message_id: str, reason: str) -> None:
        if self._audit is None:
            return
        event: AuditEvent = auditing.received(
            actor=CHANNEL,
            message_id=message_id,
            record=None,
            outcome=Outcome.MINOR_FAILURE,
            reason=reason,
        )
        try:
            self._audit.append(event)
        except AuditError:
            log.exception("audit append failed for a refused notification")


def receiver_from_settings(
    ingest: IngestService, *, audit: Auditor | None, settings: Settings
) -> SubscriptionReceiver:
    """The receiver as ``ECGBRIDGE_SUBSCRIPTION_TOPICS`` and the EHR base configure it."""
    base = settings.effective_ehr_base_url
    reader = (
        None if not base else FhirReader(base, timeout_s=settings.fhir_timeout_s, auth=smart_auth())
    )
    return SubscriptionReceiver(
        ingest=ingest, topics=settings.accepted_topics, reader=reader, audit=audit
    )


# --- the HTTP route ----------------------------------------------------------------------


def _outcome(status: int, issues: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse(
        {"resourceType": "OperationOutcome", "issue": issues},
        status_code=status,
        media_type=FHIR_JSON,
    )


def _issue(severity: str, code: str, text: str, expression: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": text}
    if expression:
        out["expression"] = [expression]
    return out


def make_subscription_router(
    receiver: SubscriptionReceiver, *, dependencies: Sequence[Any] = ()
) -> APIRouter:
    """``POST /fhir/subscription-notification``: the rest-hook endpoint to give the EHR as
    the Subscription's ``endpoint`` (channel type rest-hook, payload application/fhir+json).

    200 for a handshake or heartbeat; 202 ``{"accepted": [...], "outcome": ...}`` for an
    event notification (``outcome``, an OperationOutcome, only when some focus was not
    taken); 422 OperationOutcome for a malformed notification, an unknown topic, or when no
    focus could be taken; 503 when the EHR or the inbox is unavailable.
    """
    router = APIRouter(dependencies=list(dependencies))

    @router.post("/fhir/subscription-notification")
    async def post_notification(request: Request) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        if ctype not in (FHIR_JSON, "application/json"):
            return _outcome(
                415, [_issue("error", "not-supported", f"send {FHIR_JSON}, not {ctype or '-'}")]
            )
        body = await request.body()
        if len(body) > MAX_NOTIFICATION_BYTES:
            return _outcome(413, [_issue("error", "too-costly", "notification too large")])
        try:
            result: NotificationResult = await anyio.to_thread.run_sync(receiver.receive, body)
        except MappingError as exc:
            log.info("subscription notification refused: %s", exc)
            return _outcome(422, [_issue("error", exc.fhir_issue, str(exc), exc.location)])
        except (EhrUnavailableError, InboxError) as exc:
            log.warning("subscription notification not taken, EHR should retry: %s", exc)
            return _outcome(
                503,
                [_issue("error", "transient", f"{exc}; retry the notification later")],
            )
        note = result.notification
        issues = [_issue(i.severity, i.code, i.text, i.focus) for i in result.issues]
        if note.type is not NotificationType.EVENT_NOTIFICATION:
            return _outcome(
                200,
                [
                    _issue(
                        "information",
                        "informational",
                        f"{note.type.value} for {note.subscription} acknowledged",
                    )
                ],
            )
        if not result.accepted:
            return _outcome(422, issues)
        accepted = [
            {
                "focus": focus,
                "id": a.accepted.item.id,
                "location": f"/ecg/{a.accepted.item.id}",
                "replay": not a.accepted.created,
                "status": a.accepted.item.status.value,
            }
            for focus, a in result.accepted
        ]
        body_out: dict[str, Any] = {"accepted": accepted}
        if issues:
            body_out["outcome"] = {"resourceType": "OperationOutcome", "issue": issues}
        return JSONResponse(body_out, status_code=202)

    return router
