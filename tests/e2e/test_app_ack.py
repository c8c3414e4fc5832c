"""Enhanced-mode application ACKs on real processes: redis-server, `ecgbridge serve` (the
MLLP listener), `ecgbridge worker` and a separate MLLP peer process (`tests.support.v2_peer`)
standing in for the sender's application, which receives both the HL7 v2 result messages
(write-back mode ``hl7v2``) and the application ACKs (``ECGBRIDGE_APP_ACK_ENDPOINTS``).

An ORU^R01 with MSH-15 = AL, MSH-16 = AL gets CA on the sender's connection, then exactly one
application ACK at the peer: AA once the report is written, AE (with ERR) when the ECG is
dead-lettered (here: the peer refuses the result message with AR, a permanent write-back
error).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from integration.mllp_client import MllpClient, ack_code
from integration.samples import Sample, load_samples
from mappers.hl7v2 import build_oru_r01, parse_msh
from tests.support.processes import EcgbridgeServe, EcgbridgeWorker, wait_until
from tests.support.stack import ecgbridge_stack
from tests.support.v2_peer import V2Peer

pytestmark = pytest.mark.e2e


@dataclass
class Rig:
    serve: EcgbridgeServe
    worker: EcgbridgeWorker
    peer: V2Peer

    def status(self, key: str) -> str:
        resp = httpx.get(f"{self.serve.http_url}/ecg", params={"key": key}, timeout=10)
        return str(resp.json()["status"]) if resp.status_code == 200 else "unknown"

    def app_acks_of(self, control_id: str) -> list[dict[str, Any]]:
        """The ACK messages the peer received whose MSA-2 is `control_id`."""
        return [
            r
            for r in self.peer.received()
            if _field(r["message"], "MSH", 9).startswith("ACK")
            and _field(r["message"], "MSA", 2) == control_id
        ]


def _segment(message: str, name: str) -> list[str]:
    for seg in message.split("\r"):
        if seg.startswith(name + "|"):
            return seg.split("|")
    return []


def _field(message: str, name: str, n: int) -> str:
    """Field n of the first `name` segment (MSH counted as HL7 does: MSH-1 is the '|')."""
    fields = _segment(message, name)
    index = n - 1 if name == "MSH" else n
    return fields[index] if 0 <= index < len(fields) else ""


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return load_samples()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("app_ack")
    with (
        V2Peer(tmp / "peer") as peer,
        ecgbridge_stack(
            tmp,
            writeback_mode="hl7v2",
            v2_result_host="127.0.0.1",
            v2_result_port=str(peer.port),
            app_ack_endpoints=f"ECGCART^WARD=127.0.0.1:{peer.port}",
        ) as stack,
    ):
        yield Rig(stack.serve, stack.require_worker(), peer)


def enhanced(sample: Sample, control_id: str) -> bytes:
    """An ORU^R01 asking for both ACKs always (MSH-15 = AL, MSH-16 = AL)."""
    message = build_oru_r01(sample.record, control_id=control_id, now=datetime.now(UTC))
    msh, sep, rest = message.partition(b"\r")
    return msh + b"|||AL|AL" + sep + rest


def send_enhanced(rig: Rig, sample: Sample, control_id: str) -> None:
    message = enhanced(sample, control_id)
    assert parse_msh(message).application_ack_type == "AL"
    with MllpClient("127.0.0.1", rig.serve.mllp_port, timeout_s=30) as client:
        commit = client.send(message)
    assert ack_code(commit) == "CA", commit
    assert _field(commit.decode(), "MSA", 2) == control_id


def wait_app_ack(rig: Rig, control_id: str) -> dict[str, Any]:
    """The one application ACK of `control_id`, after a grace period for a second one."""

    def arrived() -> bool:
        assert rig.worker.alive(), rig.worker.log_tail()
        return bool(rig.app_acks_of(control_id))

    wait_until(arrived, timeout_s=180, what=f"application ACK of {control_id}", interval_s=0.25)
    time.sleep(2.0)  # a duplicate would come from the same task run, within this
    acks = rig.app_acks_of(control_id)
    assert len(acks) == 1, acks
    return acks[0]


def test_application_aa_after_the_report_is_written(rig: Rig, samples: list[Sample]) -> None:
    control_id = "APPAA" + datetime.now(UTC).strftime("%H%M%S%f")
    send_enhanced(rig, samples[0], control_id)
    ack = wait_app_ack(rig, control_id)["message"]
    assert rig.status(f"hl7:WARD|{control_id}") == "done"
    assert _field(ack, "MSA", 1) == "AA"
    assert _field(ack, "MSH", 9).split("^")[0] == "ACK"
    own_id = _field(ack, "MSH", 10)
    assert own_id and own_id != control_id
    assert (_field(ack, "MSH", 15), _field(ack, "MSH", 16)) == ("NE", "NE")
    # addressed back to the sender: MSH-5/6 = the inbound MSH-3/4
    assert (_field(ack, "MSH", 5), _field(ack, "MSH", 6)) == ("ECGCART", "WARD")
    assert not _segment(ack, "ERR")
    # the result message went to the same peer before it (write-back mode hl7v2)
    kinds = [_field(r["message"], "MSH", 9) for r in rig.peer.received()]
    assert any(k.startswith("ORU") for k in kinds)


def test_application_ae_when_the_ecg_is_dead_lettered(rig: Rig, samples: list[Sample]) -> None:
    rig.peer.queue("AR")  # the next message, this ECG's result ORU, is refused for good
    control_id = "APPAE" + datetime.now(UTC).strftime("%H%M%S%f")
    send_enhanced(rig, samples[1], control_id)
    ack = wait_app_ack(rig, control_id)["message"]
    assert rig.status(f"hl7:WARD|{control_id}") == "dead_letter"
    assert _field(ack, "MSA", 1) == "AE"
    err = _segment(ack, "ERR")
    assert err and err[3].startswith("207^"), ack
    assert "AR" in err[8]  # ERR-8 says why: the result was refused
    assert (_field(ack, "MSH", 15), _field(ack, "MSH", 16)) == ("NE", "NE")
