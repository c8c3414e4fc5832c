"""Write-back of report resources: to the EHR's FHIR server, or to an ndjson file sink.

Every resource has a deterministic id (derived from the inbox idempotency key and the model
version), and is written with ``PUT [base]/[type]/[id]`` (update-as-create), so a retry after
a timeout updates the same resource and never makes a second report.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from integration import failpoints
from integration.errors import WriteBackError
from integration.smart import TokenError
from mappers.fhir_r4 import ReportResources, resource_json

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


def _ordered(resources: ReportResources) -> list[dict[str, Any]]:
    """Observations first, then the report that references them, then its Provenance."""
    models = [*resources.observations, resources.diagnostic_report, resources.provenance]
    return [resource_json(m) for m in models]


class NdjsonSink:
    """FHIR bulk-data style ndjson files, ``<out_dir>/<ResourceType>.ndjson``.

    Keyed by resource id under an exclusive file lock, so several worker processes can share
    the folder: a retried write of the same content adds nothing, and a changed resource
    (a preliminary report made final) replaces its line, as an update on a FHIR server
    would (the files hold the current version of each resource, not its history).
    Inline attachments (the report's ECG picture) are written as files under
    ``<out_dir>/attachments/`` and referenced by a relative ``url``, so the ndjson lines stay
    small and each write reads every file once, without parsing picture bytes.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)

    def write(self, resources: ReportResources) -> Written:
        with open(self.out_dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            by_type: dict[str, list[dict[str, Any]]] = {}
            for res in _ordered(resources):
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


class FhirServerWriter:
    """PUT each resource to a FHIR R4 server (update-as-create with a deterministic id)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        transport: httpx.BaseTransport | None = None,
        auth: httpx.Auth | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(
            timeout=timeout_s,
            transport=transport,
            auth=auth,
            headers={"Accept": FHIR_JSON, "Content-Type": FHIR_JSON},
        )

    def write(self, resources: ReportResources) -> Written:
        version = ""
        for n, res in enumerate(_ordered(resources)):
            if n == 1:
                failpoints.hit("during_writeback")
            url = f"{self.base_url}/{res['resourceType']}/{res['id']}"
            try:
                resp = self._client.put(url, content=json.dumps(res))
            except TokenError as exc:
                raise WriteBackError(
                    f"no access token for the FHIR server: {exc}", transient=exc.transient
                ) from exc
            except httpx.HTTPError as exc:
                raise WriteBackError(
                    f"PUT {res['resourceType']}/{res['id']} failed: {exc.__class__.__name__}",
                    transient=True,
                ) from exc
            if resp.status_code >= 300:
                raise WriteBackError(
                    f"PUT {res['resourceType']}/{res['id']} -> {resp.status_code}: "
                    f"{_outcome_text(resp)}",
                    transient=resp.status_code >= 500 or resp.status_code in (408, 429),
                    status=resp.status_code,
                )
            if res["resourceType"] == "DiagnosticReport":
                version = str((resp.json().get("meta") or {}).get("versionId") or "")
        report_id = resources.diagnostic_report.id
        ref = f"DiagnosticReport/{report_id}" + (f"/_history/{version}" if version else "")
        return Written(report_ref=ref, location=f"{self.base_url}/DiagnosticReport/{report_id}")

    def close(self) -> None:
        self._client.close()


def _outcome_text(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    issues = body.get("issue") if isinstance(body, dict) else None
    if not issues:
        return resp.text[:200]
    return "; ".join(
        str(i.get("details", {}).get("text") or i.get("diagnostics") or i.get("code"))
        for i in issues
    )[:500]
