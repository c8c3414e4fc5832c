"""`ecgbridge demo`: the whole flow on embedded defaults, from the outside.

Starts `ecgbridge serve --worker` (SQLite inbox, on-disk broker, ndjson sink) in ./var/demo,
sends real PTB-XL sample records as HL7 v2 over a TCP connection and as FHIR over HTTP,
waits for their reports, prints a table and where the reports are, then stops everything.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from integration.mllp_client import MllpClient, ack_code
from integration.samples import Sample, load_samples
from mappers.fhir_r4 import patient_resource, record_to_observation
from mappers.hl7v2 import build_oru_r01

DEMO_DIR = Path("var/demo")
TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sent:
    sample: Sample
    channel: str
    poll: str
    sent_at: float
    #: When the triage result (preliminary report, ED alert) was first seen.
    triaged_at: float | None = None
    #: When the final report (with explanations and picture) was written.
    done_at: float | None = None
    status: dict[str, Any] | None = None


def _wait_health(client: httpx.Client, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ecgbridge serve exited with {proc.returncode}")
        try:
            resp = client.get("/health")
            if resp.status_code == 200:
                return dict(resp.json())
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("ecgbridge serve did not come up within 120 s")


def _send_all(samples: list[Sample], mllp_port: int, http: httpx.Client) -> list[Sent]:
    sent: list[Sent] = []
    with MllpClient("127.0.0.1", mllp_port) as mllp:
        for i, sample in enumerate(samples):
            if i % 2 == 0:
                control_id = f"DEMO{uuid.uuid4().hex[:12]}"
                message = build_oru_r01(sample.record, control_id=control_id, now=datetime.now(UTC))
                t0 = time.monotonic()
                ack = mllp.send(message)
                if ack_code(ack) != "AA":
                    raise RuntimeError(f"{sample.record.record_id}: ACK {ack!r}")
                sent.append(Sent(sample, "HL7/MLLP", f"/ecg?key=hl7:WARD|{control_id}", t0))
            else:
                obs = record_to_observation(sample.record)
                entries: list[dict[str, Any]] = [{"resource": obs}]
                patient = patient_resource(sample.record)
                if patient is not None:
                    entries.append({"resource": patient})
                bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
                t0 = time.monotonic()
                resp = http.post(
                    "/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"}
                )
                if resp.status_code != 202:
                    raise RuntimeError(f"{sample.record.record_id}: HTTP {resp.status_code}")
                sent.append(Sent(sample, "FHIR/HTTP", resp.headers["Location"], t0))
    return sent


def _wait_reports(sent: list[Sent], http: httpx.Client) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and any(s.done_at is None for s in sent):
        for s in sent:
            if s.done_at is not None:
                continue
            resp = http.get(s.poll)
            if resp.status_code != 200:
                continue
            state = resp.json()["status"]
            if state in ("triaged", "done") and s.triaged_at is None:
                s.triaged_at = time.monotonic()
            if state in ("done", "dead_letter"):
                s.done_at = time.monotonic()
                s.status = resp.json()
        time.sleep(0.1)


def _table(sent: list[Sent]) -> str:
    head = (
        f"{'record':<14} {'via':<10} {'cardiologist label':<22} {'MI p':>6} "
        f"{'triage':<9} {'territory (culprit vessel)':<27} {'s triage':>8} {'s final':>7}"
    )
    lines = [head, "-" * len(head)]
    for s in sent:
        result = (s.status or {}).get("result") or {}
        tri = result.get("triage")
        terr = result.get("territory") or {}
        pos = result.get("territory_positive") or []
        top = max(terr.items(), key=lambda kv: float(kv[1]), default=None)
        terr_text = ", ".join(f"{v} {terr[v]:.2f}" for v in pos) or (
            "-" if top is None else f"none (max {top[0]} {top[1]:.2f})"
        )
        prob = f"{tri['probability']:.3f}" if tri else "n/a"
        verdict = ("POSITIVE" if tri["positive"] else "negative") if tri else "refused"
        first = f"{s.triaged_at - s.sent_at:.2f}" if s.triaged_at is not None else "-"
        secs = f"{s.done_at - s.sent_at:.2f}" if s.done_at is not None else "timeout"
        lines.append(
            f"{s.sample.record.record_id:<14} {s.channel:<10} {s.sample.label:<22} {prob:>6} "
            f"{verdict:<9} {terr_text:<27} {first:>8} {secs:>7}"
        )
    return "\n".join(lines)


def run_demo(*, keep: bool = False) -> int:
    if DEMO_DIR.exists() and not keep:
        shutil.rmtree(DEMO_DIR)
    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    mllp_port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECGBRIDGE_")} | {
        "ECGBRIDGE_DATA_DIR": str(DEMO_DIR),
        "ECGBRIDGE_OUT_DIR": str(DEMO_DIR / "out"),
        "ECGBRIDGE_MLLP_PORT": str(mllp_port),
        "ECGBRIDGE_HTTP_PORT": str(http_port),
    }
    log_path = DEMO_DIR / "serve.log"
    print(f"starting ecgbridge serve --worker (embedded defaults, logs in {log_path}) ...")
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "integration.cli", "serve", "--worker"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30) as http:
                health = _wait_health(http, proc)
                print(f"model {health['model_version']}; MLLP :{mllp_port}, HTTP :{http_port}")
                samples = load_samples()
                sent = _send_all(samples, mllp_port, http)
                print(f"sent {len(sent)} real PTB-XL ECGs; waiting for their reports ...\n")
                _wait_reports(sent, http)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(_table(sent))
    out = (DEMO_DIR / "out").resolve()
    print(
        f"\nFHIR reports (ndjson): {out}/DiagnosticReport.ndjson, Observation.ndjson, "
        "Provenance.ndjson"
    )
    print(f"ECG pictures (presentedForm, PNG and PDF): {out}/attachments/")
    print(
        "s triage: the alert and the preliminary report (the first ECGs also wait for the "
        "workers to start); s final: with explanations and picture"
    )
    print(f"inbox: {(DEMO_DIR / 'ecgbridge.sqlite3').resolve()}")
    print("Decision support only: these probabilities are not a diagnosis.")
    return 0 if all(s.status and s.status["status"] == "done" for s in sent) else 1
