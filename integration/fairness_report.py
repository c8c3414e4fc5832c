"""``ecgbridge fairness report``: the fairness monitor's figures for a period, from the audit
log (see `integration.fairness_monitor` for what is counted and how drift is judged).

    ecgbridge fairness report [--since ISO|7d|24h] [--until ...] [--model-version V]
                              [--reference FILE.json] [--json]

Exit codes: 0 success, 2 a bad option (the message names it).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TextIO

from inference.fairness import GROUPS
from integration.audit import AuditLog, EventKind, SearchQuery
from integration.fairness_monitor import (
    KINDS,
    DriftAlert,
    DriftConfig,
    FairnessCounts,
    GroupSummary,
    analysis_lookup,
    decode_entry,
    wilson_ci95,
)

if TYPE_CHECKING:
    from integration.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FairnessReport:
    """The figures of a period: counts from the entries recorded in it (the drift windows
    start empty at ``since``) and the ``fairness.drift`` alerts recorded in it."""

    since: datetime | None
    until: datetime | None
    model_version: str | None
    config: DriftConfig
    groups: tuple[GroupSummary, ...]
    alerts: tuple[DriftAlert, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "since": None if self.since is None else self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
            "model_version": self.model_version,
            "window": self.config.window,
            "min_n": self.config.min_n,
            "bound": self.config.bound,
            "groups": [g.to_json() for g in self.groups],
            "alerts": [a.to_json() for a in self.alerts],
        }

    def text(self) -> str:
        def pct(x: float | None) -> str:
            return "-" if x is None else f"{x:.3f}"

        cfg = self.config
        lines = [
            f"fairness report: model {self.model_version or 'any'}, "
            f"{self.since.isoformat() if self.since else 'start'} .. "
            f"{self.until.isoformat() if self.until else 'now'}; drift window {cfg.window}, "
            f"min n {cfg.min_n}, bound {cfg.bound:.2f}",
            f"{'group':<13}{'n':>7}{'pos':>7}{'rate':>7}{'window':>14}{'ref':>7}  "
            f"{'drift':<6}{'overr':>6}  sensitivity",
        ]
        for g in self.groups:
            window = f"{pct(g.window_rate)} ({g.window_n})"
            n = g.sensitivity_n
            ci = wilson_ci95(g.true_positive, n)
            sens = (
                "-"
                if g.sensitivity is None or ci is None
                else f"{g.sensitivity:.2f} [{ci[0]:.2f}-{ci[1]:.2f}] n={n}"
                + (" (too few)" if n < cfg.min_n else "")
            )
            lines.append(
                f"{g.group:<13}{g.analysed:>7}{g.positive:>7}{pct(g.positive_rate):>7}"
                f"{window:>14}{pct(g.reference_rate):>7}  {'DRIFT' if g.drifting else '-':<6}"
                f"{g.overrides:>6}  {sens}"
            )
        lines.append(f"drift alerts in the period: {len(self.alerts)}")
        for a in self.alerts:
            when = a.recorded_at.isoformat(timespec="seconds") if a.recorded_at else "?"
            lines.append(
                f"  {when}  {a.group}: window rate {a.window_rate:.3f} over {a.window_n} "
                f"vs reference {a.reference_rate:.3f} (audit entry {a.index})"
            )
        return "\n".join(lines)


def fairness_report(
    audit: AuditLog,
    *,
    reference: Mapping[str, float],
    config: DriftConfig | None = None,
    model_version: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    batch: int = 5000,
) -> FairnessReport:
    """The report of the entries recorded between ``since`` and ``until`` (inclusive)."""
    counts = FairnessCounts(
        reference=reference,
        config=config,
        model_version=model_version,
        lookup=analysis_lookup(audit),
    )
    alerts: dict[tuple[str, int], DriftAlert] = {}
    offset = 0
    while True:
        q = SearchQuery(
            since=since, until=until, kinds=KINDS, newest_first=False, limit=batch, offset=offset
        )
        rows = audit.store.search(q)
        for row in rows:
            ev = decode_entry(row)
            if ev is None:
                continue
            if ev.kind is not EventKind.FAIRNESS_DRIFT:
                counts.observe(ev)
                continue
            alert = DriftAlert.from_event(ev)
            if alert is not None and counts.wants(alert.model_version):
                alerts.setdefault(alert.key, alert)
        offset += len(rows)
        if len(rows) < batch:
            break
    return FairnessReport(
        since=since,
        until=until,
        model_version=model_version,
        config=counts.config,
        groups=tuple(counts.summary()),
        alerts=tuple(alerts.values()),
    )


# -- CLI ----------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([wdhm])\s*$")
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes"}


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """An ISO-8601 time (UTC when it has no offset) or a duration back from now: ``7d``,
    ``24h``, ``30m``, ``2w``. Raises `argparse.ArgumentTypeError`."""
    m = _DURATION.match(text)
    if m:
        ago = timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
        return (now or datetime.now(UTC)) - ago
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO-8601 time nor a duration like 7d or 24h"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ecgbridge fairness", description="Fairness monitoring from the audit log."
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser(
        "report",
        help="per-subgroup counts, positive rates, drift, overrides and sensitivity",
        description="Per-subgroup figures of the analyses recorded in the period, and the "
        "drift alerts recorded in it. The drift windows start empty at --since.",
    )
    r.add_argument("--since", type=parse_when, help="ISO-8601 time or a duration: 7d, 24h")
    r.add_argument("--until", type=parse_when, help="ISO-8601 time or a duration: 7d, 24h")
    r.add_argument(
        "--model-version", help="the model version to report on (default: the shipped model)"
    )
    r.add_argument(
        "--reference",
        help="JSON file {group: reference positive rate} (default: the model's fold-9 rates)",
    )
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def _reference(path: str | None, model_version: str) -> dict[str, float]:
    if path is None:
        from inference.fairness import reference_positive_rates

        return reference_positive_rates(model_version)
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not all(
        k in GROUPS and isinstance(v, int | float) and 0 <= v <= 1 for k, v in data.items()
    ):
        raise ValueError(f"--reference {path}: expected {{group: rate in 0..1}}, groups {GROUPS}")
    return {str(k): float(v) for k, v in data.items()}


def cli_main(
    argv: Sequence[str],
    *,
    open_log: Callable[[], AuditLog] | None = None,
    settings: Settings | None = None,
    stdout: TextIO | None = None,
) -> int:
    """``ecgbridge fairness report ...``: 0 done, 2 bad arguments or configuration."""
    out = stdout or sys.stdout
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit as exc:
        return 0 if exc.code in (0, None) else 2
    if args.since and args.until and args.since > args.until:
        print("ecgbridge fairness: --since is after --until", file=sys.stderr)
        return 2
    from integration.audit import AuditError
    from integration.settings import get_settings

    try:
        s = settings or get_settings()
        config = DriftConfig.from_settings(s)
        version = args.model_version
        if version is None:
            from inference.registry import DEFAULT_WEIGHTS

            version = DEFAULT_WEIGHTS.meta.model_version
        reference = _reference(args.reference, version)
        audit = open_log() if open_log is not None else AuditLog.from_settings()
    except (AuditError, OSError, ValueError) as exc:
        print(f"ecgbridge fairness: {exc}", file=sys.stderr)
        return 2
    try:
        report = fairness_report(
            audit,
            reference=reference,
            config=config,
            model_version=version,
            since=args.since,
            until=args.until,
        )
    except (AuditError, ValueError) as exc:
        print(f"ecgbridge fairness: {exc}", file=sys.stderr)
        return 2
    finally:
        if open_log is None:
            audit.close()
    if not reference:
        print(f"note: no reference rates for model {version}: drift not judged", file=sys.stderr)
    print(json.dumps(report.to_json()) if args.json else report.text(), file=out)
    return 0
