"""Write-back of report resources: to the EHR's FHIR server, as an HL7 v2 result message,
or to an ndjson file sink.

Every resource has a deterministic id (derived from the inbox idempotency key and the model
version), so a retry after a timeout updates the same resource and never makes a second
report. The pipeline writes each report twice when explanations are on: ``preliminary``
after triage, ``final`` with the explanations (the same ids: a new version).

Modes (``ECGBRIDGE_WRITEBACK_MODE``, built by `integration.tasks.make_writer`):

``put`` (`FhirServerWriter`; the default when ``ECGBRIDGE_FHIR_BASE_URL`` is set)
    ``PUT [base]/[type]/[id]`` per resource (update-as-create), Observations first.
``transaction`` (`FhirTransactionWriter`)
    One ``POST [base]`` of a transaction Bundle of the same PUTs
    (`mappers.fhir_report.report_bundle`): one round trip, all or nothing on servers that
    honour transactions (some, like Medplum's in-memory engine, keep the entries processed
    before a failing one; the idempotent PUTs make the retry or the next write whole).
``hl7v2`` (`MllpResultWriter`)
    One ORU^R01 result message per write (`mappers.hl7v2_result_out`) over MLLP (TLS when
    ``ECGBRIDGE_V2_RESULT_TLS_CA`` is set) to ``ECGBRIDGE_V2_RESULT_HOST``:``_PORT``;
    preliminary -> OBR-25 ``P``, final -> ``F``. MSH-10 is one per report and status, so a
    resent write is a duplicate the receiver can recognise.
``ndjson`` (`NdjsonSink`; the default without a FHIR base URL)
    FHIR ndjson files under ``ECGBRIDGE_OUT_DIR``.

With each report the FHIR modes (``put``, ``transaction``, ``ndjson``) write its AuditEvent
(`mappers.fhir_report_audit`) and, the first time a writer sees a model version, the model's
Device and model-card DocumentReference (`mappers.fhir_device`: deterministic ids from the
model version). The FHIR writers read them first and write them only when the server lacks
them or holds another content (a PUT of the same content still makes a new version on most
servers, Medplum's included), so another worker or a restart adds no version; the ndjson sink
skips identical lines. The model card is MODEL_CARD.md (`load_model_card`); the ``hl7v2``
mode writes none of these.

Errors are one `WriteBackError` with ``transient`` set the same way for every mode:
transient (the task retries with backoff) for timeouts, refused connections, HTTP 5xx, 408
and 429, and HL7 ``AE``/``CE``; permanent (dead letter at once) for other HTTP 4xx (the
server's OperationOutcome in the message) and HL7 ``AR``/``CR``.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import httpx

from integration import failpoints
from integration.errors import WriteBackError
from integration.mllp_client import AckRejectedError, MllpClient
from integration.smart import TokenError
from mappers.fhir_device import ModelCard, ModelResources, model_resources
from mappers.fhir_r4 import ReportResources, report_bundle, resource_json
from mappers.hl7v2_result_out import (
    build_result_oru,
    report_result_oru,
    result_control_id,
    result_status,
)
from mappers.profiles import CANONICAL_ROOT

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True, slots=True)
class Written:
    """Where the report went: a FHIR reference (with version when the server gave one)."""

    report_ref: str
    location: str


class ReportWriter(Protocol):
    def write(self, resources: ReportResources) -> Written: ...

    def close(self) -> None: ...


#: The model card next to the packages (a source checkout or an editable install).
DEFAULT_MODEL_CARD: Final[Path] = Path(__file__).resolve().parent.parent / "MODEL_CARD.md"
#: Where the project publishes the model card: the DocumentReference's url when the text
#: is not at hand.
MODEL_CARD_URL: Final[str] = f"{CANONICAL_ROOT}/MODEL_CARD.md"


def load_model_card(path: Path | None = None) -> ModelCard:
    """The model card to write beside the reports: `path` (``ECGBRIDGE_MODEL_CARD_PATH``)
    or MODEL_CARD.md next to the packages. A `path` that cannot be read is an error; without
    one and without the default file (an installed wheel) the card is referenced by its
    published url only (no inline text, no hash)."""
    if path is not None:
        try:
            return ModelCard(markdown=path.read_bytes(), title=path.name)
        except OSError as exc:
            raise ValueError(
                f"ECGBRIDGE_MODEL_CARD_PATH={path}: cannot read the model card ({exc.strerror})"
            ) from exc
    if DEFAULT_MODEL_CARD.is_file():
        return ModelCard(markdown=DEFAULT_MODEL_CARD.read_bytes(), title=DEFAULT_MODEL_CARD.name)
    log.warning("MODEL_CARD.md not found; the model card is written by url (%s)", MODEL_CARD_URL)
    return ModelCard(url=MODEL_CARD_URL)


class _ModelOnce:
    """The model's Device and model card, written once per model version by one writer."""

    def __init__(self, model_card: ModelCard | None) -> None:
        self._model_card = model_card
        self._models_written: set[str] = set()

    def _model(self, resources: ReportResources) -> ModelResources | None:
        """The model card and Device when this writer has not written them yet."""
        version = resources.model_version
        if not version or version in self._models_written:
            return None
        if self._model_card is None:
            self._model_card = load_model_card()
        return model_resources(version, self._model_card)

    def _model_json(self, resources: ReportResources) -> list[dict[str, Any]]:
        model = self._model(resources)
        if model is None:
            return []
        return [resource_json(model.model_card), resource_json(model.device)]

    def _model_written(self, resources: ReportResources) -> None:
        if resources.model_version:
            self._models_written.add(resources.model_version)


def _ordered(resources: ReportResources) -> list[dict[str, Any]]:
    """Observations first, then the report that references them, its Provenance, and the
    AuditEvent of the write."""
    models = [*resources.observations, resources.diagnostic_report, resources.provenance]
    if resources.audit_event is not None:
        models.append(resources.audit_event)
    return [resources.json_of(m) for m in models]


class NdjsonSink(_ModelOnce):
    """FHIR bulk-data style ndjson files, ``<out_dir>/<ResourceType>.ndjson``.

    Keyed by resource id under an exclusive file lock, so several worker processes can share
    the folder: a retried write of the same content adds nothing, and a changed resource
    (a preliminary report made final) replaces its line, as an update on a FHIR server
    would (the files hold the current version of each resource, not its history).
    Inline attachments (the report's ECG picture) are written as files under
    ``<out_dir>/attachments/`` and referenced by a relative ``url``, so the ndjson lines stay
    small and each write reads every file once, without parsing picture bytes.
    """

    def __init__(self, out_dir: Path, *, model_card: ModelCard | None = None) -> None:
        super().__init__(model_card)
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)

    def write(self, resources: ReportResources) -> Written:
        with open(self.out_dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            by_type: dict[str, list[dict[str, Any]]] = {}
            for res in [*self._model_json(resources), *_ordered(resources)]:
                by_type.setdefault(str(res["resourceType"]), []).append(res)
            for rtype, items in by_type.items():
                path = self.out_dir / f"{rtype}.ndjson"
                lines = _lines_by_id(path)
                appended: list[str] = []
                changed = False
                for res in items:
                    line = json.dumps(self._externalise(res), separators=(",", ":"))
                    old = lines.get(str(res["id"]))
                    if old == line:
                        continue
                    lines[str(res["id"])] = line
                    if old is None:
                        appended.append(line)
                    else:
                        changed = True
                if changed:
                    tmp = path.with_suffix(".ndjson.tmp")
                    tmp.write_text("".join(v + "\n" for v in lines.values()), encoding="utf-8")
                    os.replace(tmp, path)
                elif appended:
                    with open(path, "a", encoding="utf-8") as fh:
                        fh.write("".join(v + "\n" for v in appended))
                        fh.flush()
        self._model_written(resources)
        report_id = resources.diagnostic_report.id
        return Written(
            report_ref=f"DiagnosticReport/{report_id}",
            location=str(self.out_dir / "DiagnosticReport.ndjson"),
        )

    def _externalise(self, res: dict[str, Any]) -> dict[str, Any]:
        forms = res.get("presentedForm")
        if not forms:
            return res
        folder = self.out_dir / "attachments"
        folder.mkdir(exist_ok=True)
        out = []
        for i, form in enumerate(forms):
            data = form.get("data")
            if data is None:
                out.append(form)
                continue
            ext = _EXTENSIONS.get(str(form.get("contentType")), "bin")
            name = f"{res['id']}-{i}.{ext}"
            target = folder / name
            tmp = target.with_suffix(target.suffix + ".tmp")
            tmp.write_bytes(base64.b64decode(data))
            os.replace(tmp, target)
            out.append(
                {k: v for k, v in form.items() if k != "data"} | {"url": f"attachments/{name}"}
            )
        return res | {"presentedForm": out}

    def close(self) -> None:
        return None


_EXTENSIONS = {"image/png": "png", "application/pdf": "pdf"}
_ID = re.compile(r'^\{"resourceType":"[^"]*","id":"([^"]+)"')


def _lines_by_id(path: Path) -> dict[str, str]:
    """The file's lines keyed by resource id, in file order (the id read off the line's
    start, as `resource_json` writes it; a full parse otherwise)."""
    if not path.exists():
        return {}
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                text = line.rstrip("\n")
                m = _ID.match(text)
                out[m.group(1) if m else str(json.loads(text)["id"])] = text
    return out


class _FhirHttpWriter(_ModelOnce):
    """The HTTP client and error classification both FHIR writers share."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        transport: httpx.BaseTransport | None = None,
        auth: httpx.Auth | None = None,
        model_card: ModelCard | None = None,
    ) -> None:
        super().__init__(model_card)
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            timeout=timeout_s,
            transport=transport,
            auth=auth,
            headers={"Accept": FHIR_JSON, "Content-Type": FHIR_JSON},
        )

    def _send(self, method: str, url: str, body: Any, *, what: str) -> httpx.Response:
        """`method` `body` (JSON) to `url`; a `WriteBackError` for no token, a transport
        failure (transient) or an error status (transient by `is_transient_status`, with the
        server's OperationOutcome)."""
        try:
            resp = self._client.request(method, url, content=json.dumps(body))
        except TokenError as exc:
            raise WriteBackError(
                f"no access token for the FHIR server: {exc}", transient=exc.transient
            ) from exc
        except httpx.HTTPError as exc:
            raise WriteBackError(
                f"{what} failed: {exc.__class__.__name__}", transient=True
            ) from exc
        if resp.status_code >= 300:
            raise WriteBackError(
                f"{what} -> {resp.status_code}: {_outcome_text(resp)}",
                transient=is_transient_status(resp.status_code),
                status=resp.status_code,
            )
        return resp

    def _model_to_write(self, resources: ReportResources) -> ModelResources | None:
        """The model's resources when the server lacks them: read first (once per writer),
        as a PUT of the same content would still make a new version on most servers."""
        model = self._model(resources)
        if model is None:
            return None
        if all(self._stored(m) for m in (model.model_card, model.device)):
            self._model_written(resources)
            return None
        return model

    def _stored(self, resource: Any) -> bool:
        """Whether the server holds `resource` as we would write it (any failure: no)."""
        data = resource_json(resource)
        url = f"{self.base_url}/{data['resourceType']}/{data['id']}"
        try:
            resp = self._client.get(url)
            stored = resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, TokenError, ValueError):
            return False
        if not isinstance(stored, dict):
            return False
        profiles = (stored.get("meta") or {}).get("profile")
        return profiles == data["meta"].get("profile") and all(
            stored.get(k) == v for k, v in data.items() if k != "meta"
        )

    def _written(self, report_id: str | None, version: str) -> Written:
        ref = f"DiagnosticReport/{report_id}" + (f"/_history/{version}" if version else "")
        return Written(report_ref=ref, location=f"{self.base_url}/DiagnosticReport/{report_id}")

    def close(self) -> None:
        self._client.close()


class FhirServerWriter(_FhirHttpWriter):
    """PUT each resource to a FHIR R4 server (update-as-create with a deterministic id)."""

    def write(self, resources: ReportResources) -> Written:
        version = ""
        model = self._model_to_write(resources)
        first = (
            [] if model is None else [resource_json(model.model_card), resource_json(model.device)]
        )
        for n, res in enumerate([*first, *_ordered(resources)]):
            if n == 1:
                failpoints.hit("during_writeback")
            resp = self._send(
                "PUT",
                f"{self.base_url}/{res['resourceType']}/{res['id']}",
                res,
                what=f"PUT {res['resourceType']}/{res['id']}",
            )
            if res["resourceType"] == "DiagnosticReport":
                version = str((resp.json().get("meta") or {}).get("versionId") or "")
            elif res["resourceType"] == "Device":
                self._model_written(resources)
        return self._written(resources.diagnostic_report.id, version)


def is_transient_status(status: int) -> bool:
    """Whether a retry can help an HTTP error status: 5xx, 408 and 429 yes, other 4xx no."""
    return status >= 500 or status in (408, 429)


def _outcome_text(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    return _issues_text(body) or resp.text[:200]


def _issues_text(outcome: Any) -> str:
    """The issues of an OperationOutcome, one line; "" when there are none."""
    issues = outcome.get("issue") if isinstance(outcome, dict) else None
    if not issues:
        return ""
    return "; ".join(
        str(i.get("details", {}).get("text") or i.get("diagnostics") or i.get("code"))
        + (f" ({', '.join(map(str, i['expression']))})" if i.get("expression") else "")
        for i in issues
    )[:500]


_VERSION_IN_URL = re.compile(r"/_history/([^/]+)$")


class FhirTransactionWriter(_FhirHttpWriter):
    """One transaction Bundle of idempotent PUTs per write, ``POST [base]``."""

    def write(self, resources: ReportResources) -> Written:
        report_id = resources.diagnostic_report.id
        what = f"transaction for DiagnosticReport/{report_id}"
        bundle = report_bundle(resources, model=self._model_to_write(resources))
        resp = self._send("POST", self.base_url, bundle, what=what)
        try:
            body = resp.json()
        except ValueError:
            body = None
        entries = body.get("entry") if isinstance(body, dict) else None
        if not isinstance(entries, list) or len(entries) != len(bundle["entry"]):
            # Applied or not, we cannot tell; the PUTs are idempotent, so a retry is safe.
            raise WriteBackError(
                f"{what} -> {resp.status_code} without a transaction-response of "
                f"{len(bundle['entry'])} entries",
                transient=True,
                status=resp.status_code,
            )
        version = ""
        for sent, got in zip(bundle["entry"], entries, strict=True):
            response = got.get("response") or {}
            status = _entry_status(response.get("status"))
            url = sent["request"]["url"]
            if status is None or status >= 300:
                raise WriteBackError(
                    f"{what}: PUT {url} -> {response.get('status')}: "
                    f"{_issues_text(response.get('outcome')) or 'no OperationOutcome'}",
                    transient=status is None or is_transient_status(status),
                    status=status,
                )
            if url.startswith("DiagnosticReport/"):
                version = _entry_version(response, got.get("resource"))
        self._model_written(resources)
        return self._written(report_id, version)


def _entry_status(status: Any) -> int | None:
    """``"201 Created"`` -> 201; None when it is not an HTTP status."""
    head = str(status or "").strip()[:3]
    return int(head) if head.isdigit() else None


def _entry_version(response: dict[str, Any], resource: Any) -> str:
    etag = str(response.get("etag") or "")
    if etag:
        return etag.removeprefix("W/").strip('"')
    found = _VERSION_IN_URL.search(str(response.get("location") or ""))
    if found:
        return found.group(1)
    meta = resource.get("meta") if isinstance(resource, dict) else None
    return str((meta or {}).get("versionId") or "")


class MllpResultWriter:
    """An HL7 v2.5.1 ORU^R01 result message per write, over MLLP, ACK checked.

    One connection per writer (a worker process), reopened when it fails; `MllpClient.deliver`
    resends the same message (same MSH-10) on connection failures. AA/CA: written; AE/CE:
    transient `WriteBackError`; AR/CR: permanent; no ACK after the attempts: transient.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
        sending_application: str = "ECGBRIDGE",
        receiving_application: str = "",
        receiving_facility: str = "",
        attempts: int = 3,
        backoff_s: float = 0.25,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.host = host
        self.port = port
        self._client = MllpClient(host, port, timeout_s=timeout_s, ssl_context=ssl_context)
        self._apps = (sending_application, receiving_application, receiving_facility)
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._clock = clock
        self._sleep = sleep

    def write(self, resources: ReportResources) -> Written:
        report_id = str(resources.diagnostic_report.id)
        status = result_status(str(resources.diagnostic_report.status))
        control_id = result_control_id(report_id, status)
        sending, receiving, facility = self._apps
        apps = {
            "sending_application": sending,
            "receiving_application": receiving,
            "receiving_facility": facility,
        }
        if resources.result is not None and resources.record is not None:
            # from the domain objects: the ECG's own order number (OBR-2) and sex (PID-8)
            message = build_result_oru(
                resources.result,
                resources.record,
                control_id=control_id,
                now=self._clock(),
                status=status,
                **apps,
            )
        else:
            message = report_result_oru(resources, control_id=control_id, now=self._clock(), **apps)
        what = f"ORU^R01 {control_id} (OBR-25 {status}) for DiagnosticReport/{report_id}"
        failpoints.hit("during_writeback")
        try:
            ack = self._client.deliver(
                message, attempts=self._attempts, backoff_s=self._backoff_s, sleep=self._sleep
            )
        except AckRejectedError as exc:
            raise WriteBackError(
                f"{what}: {self.host}:{self.port} answered {exc.code}: {_ack_text(exc.ack)}",
                transient=exc.code in ("AE", "CE"),
            ) from exc
        except OSError as exc:  # MllpClientError (no ACK), refused, TLS failure
            self._client.close()
            raise WriteBackError(
                f"{what}: no ACK from {self.host}:{self.port}: {exc}", transient=True
            ) from exc
        acked = _msa(ack, 2)
        if acked != control_id:
            self._client.close()  # out of step with the peer: start a fresh connection
            raise WriteBackError(
                f"{what}: the ACK from {self.host}:{self.port} is for {acked!r}", transient=True
            )
        log.info("result %s for DiagnosticReport/%s acknowledged", control_id, report_id)
        return Written(
            report_ref=f"DiagnosticReport/{report_id}",
            location=f"mllp://{self.host}:{self.port}/{control_id}",
        )

    def close(self) -> None:
        self._client.close()


def client_tls_context(*, ca: Path, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """TLS 1.2+ to a result listener whose certificate `ca` signs (hostname checked), with a
    client certificate when `cert` and `key` are given (mTLS)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _msa(ack: bytes, n: int) -> str:
    for seg in ack.replace(b"\n", b"\r").split(b"\r"):
        if seg.startswith(b"MSA"):
            fields = seg.decode("utf-8", "replace").split(seg[3:4].decode() or "|")
            return fields[n] if len(fields) > n else ""
    return ""


def _ack_text(ack: bytes) -> str:
    """MSA-3 and ERR-8 of a negative ACK, for the error (the peer's words, cut short)."""
    texts = [_msa(ack, 3)]
    for seg in ack.replace(b"\n", b"\r").split(b"\r"):
        if seg.startswith(b"ERR"):
            fields = seg.decode("utf-8", "replace").split("|")
            texts.append(fields[8] if len(fields) > 8 else "")
    return "; ".join(t for t in texts if t)[:300] or "no text"
