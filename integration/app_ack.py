"""HL7 v2.5.1 enhanced-mode application acknowledgment (chapter 2.9.3), sent by the worker.

In enhanced mode the listener answers the commit ACK (CA/CE/CR) at once; when the sender's
MSH-16 (application acknowledgment type, HL7 table 0155) asks for it, the application ACK
follows once the ECG has been processed: AA when its report is written, AE (with ERR) when it
was dead-lettered. It is a new message to the sender's application (MSH-9 ``ACK``, MSA-2 = the
inbound MSH-10, its own MSH-10, MSH-15/16 = ``NE`` so the sender sends no ACK of the ACK
beyond the transport one), delivered with `MllpClient.deliver` to the endpoint configured for
that sender (``ECGBRIDGE_APP_ACK_ENDPOINTS``).

Sent at least once: its MSH-10 is derived from the inbox item, so a resend after a crash is
recognisably the same message, and a successful send is audited (``ack.application.sent``)
and looked up before sending again. No endpoint for a sender: logged once per sender and
audited (``ack.application.skipped``); never an error for the ECG.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Literal

from integration.audit import AuditEvent, EventKind, Outcome
from integration.audit.log import AuditLog
from integration.audit.store import SearchQuery
from integration.inbox import ContentType, Inbox, InboxItem, Status
from integration.ingest import ENHANCED_MODES
from integration.mllp_client import AckRejectedError, MllpClient, ack_code
from mappers.errors import MappingError
from mappers.hl7v2 import Msh, build_ack, parse_msh

log = logging.getLogger(__name__)

#: host, port of a sender's application-ACK listener.
Endpoint = tuple[str, int]

APP_ACK_MODES = frozenset({"AL", "ER", "SU", "NE"})


class ProcessingError(MappingError):
    """The ECG was accepted but could not be processed (dead-lettered): AE, ERR-3 207."""

    hl7_code = 207
    ack_code = "AE"


def sender_key(msh: Msh) -> str:
    """``MSH-3^MSH-4`` by their namespace ids (first components), e.g. ``ECGCART^WARD``."""
    sep = msh.encoding_chars[:1] or "^"
    return f"{msh.sending_application.split(sep)[0]}^{msh.sending_facility.split(sep)[0]}"


def parse_endpoints(spec: str) -> dict[str, Endpoint]:
    """``"ECGCART^WARD=10.0.0.5:2576, *=engine:2577"`` -> {sender: (host, port)}.

    ``*`` is the endpoint for senders not listed. Raises `ValueError` naming the bad entry.
    """
    out: dict[str, Endpoint] = {}
    for raw in spec.split(","):
        entry = raw.strip()
        if not entry:
            continue
        sender, eq, target = entry.partition("=")
        host, colon, port = target.strip().rpartition(":")
        if not eq or not sender.strip() or not colon or not host or not port.isdigit():
            raise ValueError(
                f"application-ACK endpoint {entry!r} is not SENDER=host:port "
                "(SENDER is MSH-3^MSH-4, e.g. ECGCART^WARD, or * for any sender)"
            )
        if not 0 < int(port) < 65536:
            raise ValueError(f"application-ACK endpoint {entry!r}: port out of range")
        out[sender.strip()] = (host.strip("[]"), int(port))
    return out


def app_ack_wanted(msh: Msh, code: str) -> bool:
    """Whether the sender asked for an application ACK with this code: enhanced mode only
    (MSH-15 set, as the listener decides), MSH-16 AL always, ER on AE/AR, SU on AA, NE or
    empty never."""
    if msh.accept_ack_type.upper() not in ENHANCED_MODES:
        return False
    mode = msh.application_ack_type.upper()
    if mode == "AL":
        return True
    if mode == "ER":
        return code in ("AE", "AR")
    if mode == "SU":
        return code == "AA"
    return False


def app_ack_control_id(item_id: str) -> str:
    """The application ACK's own MSH-10 (20 characters, the HL7 v2.5.1 maximum), the same
    for every send of one item's ACK."""
    return "AP" + hashlib.sha256(item_id.encode()).hexdigest()[:18]


def build_app_ack(
    msh: Msh,
    code: str,
    *,
    control_id: str,
    now: datetime,
    error: MappingError | None = None,
    text: str = "",
) -> bytes:
    """The application ACK of the message whose header is `msh`: an ACK (`build_ack`) whose
    MSH-15 and MSH-16 are ``NE``, so that it asks for no acknowledgment of its own."""
    if code not in ("AA", "AE", "AR"):
        raise ValueError(f"an application ACK is AA, AE or AR, got {code!r}")
    return build_ack(
        msh, code, control_id=control_id, now=now, error=error, text=text, ack_types=("NE", "NE")
    )


#: What `AppAcker.after_processing` did: sent (now or before), not wanted (original mode,
#: MSH-16 said no, not HL7 v2, not finished), skipped (no endpoint for this sender) or
#: failed (to be tried again).
AckOutcome = Literal["sent", "not-wanted", "skipped", "failed"]


def may_want_app_ack(inbox: Inbox, item_id: str) -> bool:
    """Whether the item might need an application ACK, from its stored commit answer only
    (cheap: no message read). False for the usual original-mode AA/AE/AR."""
    try:
        return not _answered_in_original_mode(inbox, item_id)
    except Exception:  # cannot tell: let the ACK task look properly
        return True


def _answered_in_original_mode(inbox: Inbox, item_id: str) -> bool:
    """True when the item is not HL7 v2, or was answered AA/AE/AR (MSH-15 empty: original
    mode, no application ACK). An enhanced-mode item may have no stored ACK at all
    (MSH-15 = NE), so anything else needs the message's MSH-16."""
    stored = inbox.stored_ack(item_id)
    if stored is None:
        return True
    content_type, ack = stored
    return content_type is not ContentType.HL7V2 or (
        ack is not None and ack_code(ack) in ("AA", "AE", "AR")
    )


class AppAcker:
    """Sends the application ACK of finished HL7 v2 items (the worker's hook)."""

    def __init__(
        self,
        *,
        endpoints: Mapping[str, Endpoint],
        audit: AuditLog | None,
        timeout_s: float = 10.0,
        attempts: int = 3,
        backoff_s: float = 0.25,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._endpoints = dict(endpoints)
        self._audit = audit
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._warned: set[str] = set()  # senders whose missing endpoint was logged
        self._warned_lock = threading.Lock()  # a thread-pool worker shares this object

    def after_processing(self, item_id: str, *, inbox: Inbox) -> AckOutcome:
        """Send the application ACK for `item_id` if it is finished and its sender asked
        for one. Never raises (the ECG's report does not depend on it): ``"failed"`` when
        it should have gone and did not, so the caller can try again later."""
        try:
            if _answered_in_original_mode(inbox, item_id):
                return "not-wanted"  # the usual case, decided without reading the message
            item = inbox.get(item_id)
            if item is None:
                return "not-wanted"
            return self._acknowledge(item)
        except Exception:
            log.exception("application ACK for inbox item %s not sent", item_id)
            return "failed"

    def _acknowledge(self, item: InboxItem) -> AckOutcome:
        if item.content_type is not ContentType.HL7V2:
            return "not-wanted"
        if item.status in (Status.DONE, Status.TRIAGED):
            code, error = "AA", None
        elif item.status is Status.DEAD_LETTER:
            code, error = "AE", ProcessingError(f"ECG not processed: {item.error or 'unknown'}")
        else:
            return "not-wanted"  # not finished: a retry or the reconciler comes back to it
        msh = parse_msh(item.payload)
        if not app_ack_wanted(msh, code):
            return "not-wanted"
        actor = f"worker:{msh.sending_application}|{msh.sending_facility}"
        if self._already_sent(item.id):
            log.info("application ACK for inbox item %s already sent", item.id)
            return "sent"
        sender = sender_key(msh)
        target = self._endpoints.get(sender) or self._endpoints.get("*")
        if target is None:
            with self._warned_lock:
                first = sender not in self._warned
                self._warned.add(sender)
            if first:
                log.warning(
                    "no application-ACK endpoint for sender %s (ECGBRIDGE_APP_ACK_ENDPOINTS);"
                    " application ACKs to it are skipped",
                    sender,
                )
            self._record(item, msh, EventKind.APP_ACK_SKIPPED, code, actor=actor)
            return "skipped"
        control_id = app_ack_control_id(item.id)
        text = "ECG report written" if code == "AA" else ""
        message = build_app_ack(
            msh, code, control_id=control_id, now=self._clock(), error=error, text=text
        )
        host, port = target
        client = MllpClient(host, port, timeout_s=self._timeout_s)
        try:
            client.deliver(message, attempts=self._attempts, backoff_s=self._backoff_s)
        except AckRejectedError as exc:
            failure = f"{host}:{port} answered {exc.code}"
        except OSError as exc:  # MllpClientError (no ACK after the attempts), refused
            failure = f"no ACK from {host}:{port}: {exc.__class__.__name__}: {exc}"
        else:
            failure = ""
        finally:
            client.close()
        if failure:
            log.error(
                "application ACK %s %s of message %s not delivered: %s",
                code,
                control_id,
                msh.control_id,
                failure,
            )
        else:
            log.info("application ACK %s %s of message %s sent", code, control_id, msh.control_id)
        self._record(
            item,
            msh,
            EventKind.APP_ACK_SENT,
            code,
            actor=actor,
            control_id=control_id,
            error=failure,
        )
        return "failed" if failure else "sent"

    def _already_sent(self, item_id: str) -> bool:
        if self._audit is None:
            return False
        found = self._audit.search(
            SearchQuery(ecg_id=item_id, kinds=(EventKind.APP_ACK_SENT.value,), limit=20)
        )
        return any(e.outcome == Outcome.SUCCESS for e in found)

    def _record(
        self,
        item: InboxItem,
        msh: Msh,
        kind: EventKind,
        code: str,
        *,
        actor: str,
        control_id: str = "",
        error: str = "",
    ) -> None:
        if self._audit is None:
            return
        detail: dict[str, str | None] = {"ack_code": code, "sender": sender_key(msh)}
        if control_id:
            detail["ack_control_id"] = control_id
        if error:
            detail["error"] = error[:500]
        self._audit.append(
            AuditEvent(
                kind=kind,
                actor=actor,
                outcome=Outcome.SERIOUS_FAILURE if error else Outcome.SUCCESS,
                ecg_id=item.id,
                message_id=msh.control_id or None,
                detail=detail,
            )
        )
