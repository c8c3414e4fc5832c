"""Retention by archiving, never by silent deletion.

Entries older than ``retention_days`` (at least six years) are copied, in index order and
from the start of the log, to a gzip ndjson archive (the raw entry bytes, their leaf hashes,
and the signed tree head that covers them); the archive's SHA-256 and range are then
appended to the log as an ``audit.archived`` event. The store stays append-only: archived
rows remain until a database administrator removes them under the documented procedure,
and the log's signed heads still prove what the archive must contain.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from integration.audit.codec import decode
from integration.audit.events import AuditEvent, EventKind
from integration.audit.log import AuditLog
from integration.audit.store import SearchQuery

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ArchiveResult:
    path: Path
    start: int
    stop: int
    sha256: str


def archived_upto(audit: AuditLog) -> int:
    """The first index not yet archived (0 when nothing was)."""
    found = audit.search(SearchQuery(kinds=(EventKind.AUDIT_ARCHIVED.value,), limit=1))
    if not found:
        return 0
    stop = found[0].detail.get("stop")
    return int(stop) if isinstance(stop, int | str) else 0


def archive_expired(
    audit: AuditLog, *, now: datetime, retention_days: int, archive_dir: Path, actor: str
) -> ArchiveResult | None:
    """Archive the entries recorded before ``now - retention_days`` that are not archived
    yet. Returns None when there are none."""
    cutoff_ms = int((now - timedelta(days=retention_days)).timestamp() * 1000)
    start = archived_upto(audit)
    lines: list[bytes] = []
    stop = start
    for idx, entry, lh in audit.store.stream():
        if idx < start:
            continue
        if int(decode(entry).recorded_at.timestamp() * 1000) >= cutoff_ms:
            break
        rec = {"index": idx, "entry": base64.b64encode(entry).decode(), "leaf_hash": lh.hex()}
        lines.append(json.dumps(rec).encode() + b"\n")
        stop = idx + 1
    if stop == start:
        return None
    head = audit.inclusion_proof(stop - 1).head
    lines.append(
        json.dumps(
            {
                "tree_head": {
                    "size": head.size,
                    "root": head.root.hex(),
                    "timestamp_ms": head.timestamp_ms,
                    "key_id": head.key_id,
                    "signature": base64.b64encode(head.signature).decode(),
                }
            }
        ).encode()
        + b"\n"
    )
    data = gzip.compress(b"".join(lines), mtime=0)
    archive_dir.mkdir(parents=True, exist_ok=True)
    path = archive_dir / f"audit-{start:012d}-{stop:012d}.ndjson.gz"
    if path.exists():
        raise FileExistsError(f"archive {path} exists already; refusing to overwrite")
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    audit.append(
        AuditEvent(
            kind=EventKind.AUDIT_ARCHIVED,
            actor=actor,
            resource=path.name,
            detail={
                "start": start,
                "stop": stop,
                "sha256": digest,
                "retention_days": retention_days,
            },
        )
    )
    log.info("archived audit entries %d..%d to %s", start, stop - 1, path)
    return ArchiveResult(path, start, stop, digest)
