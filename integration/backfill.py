"""`ecgbridge backfill DIR`: push an archive of ECG files through the live intake.

Every file goes through `IngestService`, the same validate -> audit -> commit -> queue path
as the MLLP and HTTP listeners: HL7 v2 files via `receive_hl7`, FHIR JSON via
`receive_fhir`, and other formats (WFDB, aECG, DICOM) read with `read_ecg_file` and sent as
an ORU^R01 built from the record (MSH-10 from the file's SHA-256, so a rerun is a replay).

- Low queue priority (9 by default) so live ED traffic (STAT 0, routine 5) overtakes it.
- Rate-limited (``rate_per_s``), so the workers keep headroom for live traffic.
- Resumable: each finished file's path (relative to DIR) is appended to ``state_file``,
  fsynced; a rerun skips them. A file interrupted between commit and state write is
  replayed and the inbox answers with the stored result (no second analysis).
- Progress on a text stream (stderr), a `BackfillSummary` at the end. No PHI is printed:
  only paths relative to DIR and error reasons.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TextIO

from integration.errors import DuplicateConflictError, InboxError, InputFileError
from integration.ingest import FhirAccepted
from integration.mllp_client import ack_code
from integration.settings import Settings
from mappers.errors import MappingError

log = logging.getLogger(__name__)

#: Celery priority for backfilled ECGs: 0 is STAT, 5 routine, 9 the lowest.
BACKFILL_PRIORITY = 9
CHANNEL = "backfill"
#: Files that are part of another ECG file (WFDB signals, annotations) or not ECGs.
_COMPANION_SUFFIXES = frozenset({".dat", ".atr", ".qrs", ".md", ".csv", ".state", ".done"})
_OTHER_FORMATS = frozenset({".hea", ".xml", ".dcm"})


class Intake(Protocol):
    """The two doors of `integration.ingest.IngestService` that backfill uses."""

    def receive_hl7(self, message: bytes, *, channel: str = ...) -> bytes | None: ...

    def receive_fhir(self, body: bytes, *, channel: str = ...) -> list[FhirAccepted]: ...


@dataclass
class BackfillSummary:
    files: int = 0
    already_done: int = 0
    accepted: int = 0
    refused: int = 0
    #: Transient failures (storage down, AE): not recorded as done, a rerun retries them.
    failed: int = 0
    elapsed_s: float = 0.0
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.failed == 0 and self.already_done + self.accepted + self.refused == self.files

    def text(self) -> str:
        rate = self.accepted / self.elapsed_s if self.elapsed_s > 0 else 0.0
        lines = [
            f"backfill: {self.files} ECG files; {self.already_done} done before, "
            f"{self.accepted} accepted, {self.refused} refused, {self.failed} to retry "
            f"({self.elapsed_s:.1f} s, {rate:.1f}/s)"
        ]
        lines += [f"  {path}: {reason}" for path, reason in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  ... and {len(self.problems) - 50} more")
        return "\n".join(lines)


def ecg_files(directory: Path) -> list[Path]:
    """The ECG files under `directory`, sorted (the order is the resume order)."""
    out = []
    for path in sorted(directory.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix.lower() in _COMPANION_SUFFIXES:
            continue
        out.append(path)
    return out


class StateFile:
    """Append-only list of finished paths, one per line, fsynced per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[str] = set()
        if path.exists():
            self.done = {ln for ln in path.read_text(encoding="utf-8").splitlines() if ln}
        self._fh = path.open("a", encoding="utf-8")

    def mark(self, rel: str) -> None:
        self._fh.write(rel + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done.add(rel)

    def close(self) -> None:
        self._fh.close()


class _Outcome:
    ACCEPTED = "accepted"
    REFUSED = "refused"
    FAILED = "failed"


def _hl7_message(raw: bytes) -> bytes:
    body = raw.strip(b"\x0b\x1c\r\n \t\xef\xbb\xbf")
    return body.replace(b"\r\n", b"\r").replace(b"\n", b"\r") + b"\r"


def _send_hl7(intake: Intake, message: bytes) -> tuple[str, str]:
    ack = intake.receive_hl7(message, channel=CHANNEL)
    code = ack_code(ack) if ack else ""
    if code in ("AA", "CA"):
        return _Outcome.ACCEPTED, ""
    err = _err_code(ack or b"")
    if code in ("AR", "CR") or (code in ("AE", "CE") and err not in ("", _STORAGE_ERR)):
        return _Outcome.REFUSED, f"refused ({code}, HL7 error {err or '-'})"
    return _Outcome.FAILED, f"not stored ({code or 'no ACK'}); rerun to retry"


#: HL7 table 0357 "application internal error": the inbox or audit log could not commit.
_STORAGE_ERR = "207"


def _err_code(ack: bytes) -> str:
    """ERR-3.1 (HL7 table 0357 code) of an ACK, or "" if there is none."""
    for seg in ack.replace(b"\n", b"\r").split(b"\r"):
        if seg.startswith(b"ERR"):
            fields = seg.split(seg[3:4] or b"|")
            if len(fields) > 3:
                return fields[3].split(b"^")[0].decode("ascii", "replace")
    return ""


def _as_oru(path: Path, raw: bytes) -> bytes:
    from integration.files import read_ecg_file
    from mappers.hl7v2_oru_out import build_oru_r01

    (ecg,) = read_ecg_file(path)[:1]
    control_id = hashlib.sha256(raw).hexdigest()[:20]
    return build_oru_r01(
        ecg.record,
        control_id=control_id,
        sending_application="ECGBRIDGE-BACKFILL",
        sending_facility="ARCHIVE",
        now=datetime.now(UTC),
    )


def push_file(intake: Intake, path: Path) -> tuple[str, str]:
    """Send one file through the intake: (outcome, reason)."""
    raw = path.read_bytes()
    head = raw.lstrip(b"\x0b\xef\xbb\xbf \t\r\n")
    try:
        if head.startswith(b"MSH"):
            return _send_hl7(intake, _hl7_message(raw))
        if head.startswith(b"{"):
            intake.receive_fhir(raw, channel=CHANNEL)
            return _Outcome.ACCEPTED, ""
        if path.suffix.lower() in _OTHER_FORMATS or raw[128:132] == b"DICM":
            return _send_hl7(intake, _as_oru(path, raw))
    except (InputFileError, MappingError, DuplicateConflictError) as exc:
        return _Outcome.REFUSED, str(exc)
    except InboxError as exc:
        return _Outcome.FAILED, f"{exc}; rerun to retry"
    except ValueError as exc:  # e.g. a record the ORU builder cannot carry
        return _Outcome.REFUSED, f"{exc.__class__.__name__}: {exc}"
    return _Outcome.REFUSED, "not an ECG file (HL7 v2, FHIR JSON, WFDB, aECG or DICOM)"


class _Progress:
    def __init__(self, stream: TextIO | None, total: int, clock: Callable[[], float]) -> None:
        self._stream = stream
        self._total = total
        self._clock = clock
        self._start = clock()
        self._tty = bool(stream is not None and stream.isatty())
        self._every = 1 if self._tty else max(1, total // 20)

    def update(self, done: int, *, force: bool = False) -> None:
        if self._stream is None or (done % self._every and not force and done != self._total):
            return
        elapsed = max(self._clock() - self._start, 1e-9)
        rate = done / elapsed
        frac = done / self._total if self._total else 1.0
        bar = "#" * int(frac * 30)
        eta = (self._total - done) / rate if rate > 0 else 0.0
        line = (
            f"backfill [{bar:<30}] {done}/{self._total} {frac:4.0%} {rate:5.1f}/s eta {eta:5.0f}s"
        )
        self._stream.write(("\r" if self._tty else "") + line + ("" if self._tty else "\n"))
        self._stream.flush()

    def close(self) -> None:
        if self._stream is not None and self._tty:
            self._stream.write("\n")
            self._stream.flush()


def default_state_file(settings: Settings, directory: Path) -> Path:
    digest = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    return settings.data_dir / "backfill" / f"{digest}.done"


@contextmanager
def open_intake(settings: Settings, *, priority: int = BACKFILL_PRIORITY) -> Iterator[Intake]:
    """The live intake (inbox, broker, audit log) with every enqueue at `priority` or lower."""
    from integration.audit import AuditLog
    from integration.celery_app import create_app, enqueue_analysis
    from integration.inbox import Inbox
    from integration.ingest import IngestService

    audit = AuditLog.from_settings()
    inbox = Inbox.from_url(settings.effective_database_url, cipher=audit.cipher)
    celery = create_app(settings)

    def enqueue(item_id: str, item_priority: int) -> None:
        enqueue_analysis(celery, item_id, priority=max(item_priority, priority))

    try:
        yield IngestService(
            inbox=inbox, enqueue=enqueue, audit=audit, patient_key=audit.patient_key
        )
    finally:
        inbox.dispose()
        audit.close()


def backfill(
    settings: Settings,
    directory: Path,
    *,
    rate_per_s: float = 5.0,
    state_file: Path | None = None,
    progress: TextIO | None = None,
    intake: Intake | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> BackfillSummary:
    """Push every ECG file under `directory` through the intake (see the module docstring).

    `intake` defaults to the live one built from `settings` (`open_intake`). Raises
    `InputFileError` when `directory` is not a folder; KeyboardInterrupt leaves a state
    file that the next run resumes from.
    """
    if not directory.is_dir():
        raise InputFileError("not a folder", path=str(directory))
    if rate_per_s <= 0:
        raise ValueError("rate_per_s must be positive")
    if intake is None:
        with open_intake(settings) as live:
            return backfill(
                settings,
                directory,
                rate_per_s=rate_per_s,
                state_file=state_file,
                progress=progress,
                intake=live,
                sleep=sleep,
                clock=clock,
            )
    state = StateFile(state_file or default_state_file(settings, directory))
    files = ecg_files(directory)
    summary = BackfillSummary(files=len(files))
    bar = _Progress(progress, len(files), clock)
    start = clock()
    sent = 0
    try:
        for n, path in enumerate(files, start=1):
            rel = path.relative_to(directory).as_posix()
            if rel in state.done:
                summary.already_done += 1
                bar.update(n)
                continue
            wait = start + sent / rate_per_s - clock()
            if wait > 0:
                sleep(wait)
            outcome, reason = push_file(intake, path)
            sent += 1
            if outcome == _Outcome.ACCEPTED:
                summary.accepted += 1
                state.mark(rel)
            elif outcome == _Outcome.REFUSED:
                summary.refused += 1
                summary.problems.append((rel, reason))
                state.mark(rel)
            else:
                summary.failed += 1
                summary.problems.append((rel, reason))
            bar.update(n)
    finally:
        summary.elapsed_s = clock() - start
        bar.close()
        state.close()
    log.info(
        "backfill of %d files: %d accepted, %d refused, %d to retry",
        summary.files,
        summary.accepted,
        summary.refused,
        summary.failed,
    )
    return summary
