"""``ecgbridge audit ...``: verify, export, prove, checkpoint, archive.

`cli_main(argv)` returns the exit code: 0 success / intact, 1 the log failed verification
(the first bad entry's index is printed), 2 bad arguments or configuration. It reads the
store named by ``ECGBRIDGE_DATABASE_URL`` (default under ``ECGBRIDGE_DATA_DIR``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TextIO

from integration.audit.errors import AuditError
from integration.audit.export import export_ndjson
from integration.audit.log import AuditLog
from integration.audit.store import SearchQuery


def _when(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ecgbridge audit", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="check the whole log and its signed tree heads")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    e = sub.add_parser("export", help="entries as FHIR AuditEvent ndjson")
    e.add_argument("--patient", help="patient identifier (matched by its HMAC search key)")
    e.add_argument("--since", type=_when, help="ISO time, inclusive")
    e.add_argument("--until", type=_when, help="ISO time, inclusive")
    e.add_argument("--kind", action="append", default=[], help="event kind (repeatable)")
    e.add_argument("--model-version")
    e.add_argument("--finding")
    e.add_argument("--override", action="store_true", default=None)
    e.add_argument("--include-phi", action="store_true", help="decrypt patient identifiers")
    e.add_argument("--out", help="file to write (default: standard output)")
    e.add_argument("--actor", default="cli", help="who exports (audited)")
    i = sub.add_parser("prove", help="inclusion proof of one entry")
    i.add_argument("index", type=int)
    c = sub.add_parser("consistency", help="consistency proof between two signed heads")
    c.add_argument("size1", type=int)
    c.add_argument("size2", type=int)
    sub.add_parser("checkpoint", help="sign a tree head over the whole log now")
    a = sub.add_parser("archive", help="archive entries past the retention period")
    a.add_argument("--now", type=_when, default=None)
    return p


def cli_main(
    argv: Sequence[str],
    *,
    open_log: Callable[[], AuditLog] | None = None,
    stdout: TextIO | None = None,
) -> int:
    out = stdout or sys.stdout
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:
        return 0 if exc.code in (0, None) else 2
    try:
        log = open_log() if open_log is not None else AuditLog.from_settings()
    except (AuditError, OSError, ValueError) as exc:
        print(f"ecgbridge audit: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(args, log, out)
    except (AuditError, ValueError, OSError) as exc:
        print(f"ecgbridge audit: {exc}", file=sys.stderr)
        return 2
    finally:
        if open_log is None:
            log.close()


def _run(args: argparse.Namespace, log: AuditLog, out: TextIO) -> int:
    if args.cmd == "verify":
        r = log.verify()
        if args.json:
            print(
                json.dumps(
                    {
                        "ok": r.ok,
                        "size": r.size,
                        "signed_size": r.signed_size,
                        "heads_checked": r.heads_checked,
                        "root": r.root.hex(),
                        "first_bad_index": r.first_bad_index,
                        "problem": None if r.problem is None else r.problem.value,
                        "message": r.message,
                        "append_only_enforced": r.append_only_enforced,
                        "warnings": list(r.warnings),
                        "seconds": round(r.seconds, 3),
                    }
                ),
                file=out,
            )
        elif r.ok:
            print(
                f"audit log intact: {r.size} entries, {r.signed_size} under signed tree "
                f"heads ({r.heads_checked} checked), root {r.root.hex()}",
                file=out,
            )
        else:
            print(
                f"audit log FAILED verification: first bad entry {r.first_bad_index} "
                f"({r.problem}): {r.message}",
                file=out,
            )
        for w in r.warnings:
            print(f"warning: {w}", file=out)
        return 0 if r.ok else 1
    if args.cmd == "export":
        query = SearchQuery(
            patient_key=None if args.patient is None else log.patient_key(args.patient),
            since=args.since,
            until=args.until,
            kinds=tuple(args.kind),
            model_version=args.model_version,
            finding=args.finding,
            override=args.override,
        )
        with contextlib.ExitStack() as stack:
            target = (
                out
                if args.out is None
                else stack.enter_context(open(args.out, "w", encoding="utf-8"))
            )
            n = export_ndjson(log, query, target, actor=args.actor, include_phi=args.include_phi)
        print(f"exported {n} AuditEvent resources", file=sys.stderr)
        return 0
    if args.cmd == "prove":
        p = log.inclusion_proof(args.index)
        print(
            json.dumps(
                {
                    "index": p.index,
                    "tree_size": p.head.size,
                    "root": p.head.root.hex(),
                    "leaf_hash": p.leaf_hash.hex(),
                    "path": [h.hex() for h in p.path],
                    "verified": p.verify(),
                }
            ),
            file=out,
        )
        return 0 if p.verify() else 1
    if args.cmd == "consistency":
        c = log.consistency_proof(args.size1, args.size2)
        print(
            json.dumps(
                {
                    "size1": c.old.size,
                    "size2": c.new.size,
                    "root1": c.old.root.hex(),
                    "root2": c.new.root.hex(),
                    "path": [h.hex() for h in c.path],
                    "verified": c.verify(),
                }
            ),
            file=out,
        )
        return 0 if c.verify() else 1
    if args.cmd == "checkpoint":
        head = log.sign_head()
        print(
            "log is empty"
            if head is None
            else f"signed tree head: size {head.size}, root {head.root.hex()}",
            file=out,
        )
        return 0
    if args.cmd == "archive":
        from integration.audit.config import get_audit_settings
        from integration.audit.retention import archive_expired

        s = get_audit_settings()
        res = archive_expired(
            log,
            now=args.now or datetime.now(UTC),
            retention_days=s.audit_retention_days,
            archive_dir=s.archive_dir,
            actor="cli",
        )
        print(
            "nothing to archive"
            if res is None
            else f"archived entries {res.start}..{res.stop - 1} to {res.path}",
            file=out,
        )
        return 0
    raise AssertionError(args.cmd)  # pragma: no cover
