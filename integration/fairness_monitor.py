"""Fairness monitoring in production (issue 6, item 4): running counts per subgroup of ECGs
analysed, positive rate, clinician overrides and clinician-confirmed sensitivity, read from
the audit log, and an alert when a subgroup's positive rate drifts from its reference.

The audit log is the single source of truth. Every `serve` replica runs a `FairnessMonitor`
that reads the same entries in the same order, so every replica computes the same counts and
the same alerts, however many workers on however many machines wrote them; a restart rebuilds
the counts from the log. ``ecgbridge fairness report`` computes the same figures for a period.

**Groups** (`GROUPS`): ``all``; sex ``male`` / ``female``; age band ``<40`` / ``40-65`` /
``>65``; sex x band (``female/<40``). From the ``sex`` and ``age_band`` of each
``analysis.finished`` entry (`integration.auditing`); an unknown sex or age leaves the ECG in
``all`` and the groups it has.

**Counted**, per ``analysis.finished`` of the monitored model version, once per ``ecg_id``
(a retried analysis is not counted twice):

* ``analysed``: the triage ran (finding ``triage-positive`` / ``triage-negative``); ECGs the
  quality gate refused (``not-analysed``) are counted apart as ``not_analysed``.
* ``positive``: finding ``triage-positive``. The reference rates are the shipped model's on
  PTB-XL fold 9 at the same threshold (`inference.fairness.reference_positive_rates`).
* ``overrides``: ``cds.feedback`` entries with ``override`` set, in the groups of the analysis
  they concern: through the entry's ``ecg_id``, or, when the replica that took the feedback
  had not issued the card, through the ``cds.card.shown`` entry of the same card uuid. An
  override that cannot be tied to an analysis counts in ``all`` only.

**Sensitivity** is clinician-confirmed, not angiography-confirmed. The outcome of an ECG is
the most recent *decisive* CDS feedback on its card (`outcome_evidence`):

* positive card accepted: true positive (a clinician acted on the alert);
* negative card overridden with reason ``disagree``: false negative (a clinician says the
  model missed an MI);
* positive card overridden ``disagree``: false positive; negative card accepted: true
  negative. Neither enters the sensitivity;
* any other feedback (overridden as ``already-managed``, ``poor-quality``, ``other``, no
  reason) is no evidence about the outcome and changes nothing.

A false negative stands: a later acceptance of the same negative card does not undo it.
``sensitivity = TP / (TP + FN)``, always reported with its n (TP + FN) and a Wilson 95%
interval, and marked "too few" below the drift ``min_n``. Feedback is voluntary and selective,
so this is a screen for a subgroup that is missed more often than the others, not an estimate
of the model's sensitivity. (A later confirmed diagnosis has no audit event kind yet; when it
gets one, it belongs in `outcome_evidence`.)

**Drift.** Each group keeps a sliding window of its last ``window`` analyses. Once the window
holds ``min_n``, a window positive rate further than ``bound`` (absolute) from the group's
reference starts an *excursion*: one `DriftAlert`, whatever the number of polls while it
lasts. The excursion ends when the rate comes back within ``bound / 2`` (hysteresis, so a rate
hovering at the bound does not alert on every wobble); a later departure alerts again.

Each alert is a ``fairness.drift`` audit entry (no PHI: group, rates, n, the index of the
analysis entry that triggered it), a warning in the log and
``ecgbridge_fairness_drift_alerts_total{group}``. Alerts are deterministic (a group and the
index of the triggering entry), so a replica or a restarted process that finds an alert
already in the log does not write it again; two replicas polling within the same
milliseconds may both write one, and the report counts it once. The Prometheus series are
rebuilt from the log when the process starts, so page on ``ecgbridge_fairness_drifting == 1``
rather than on an increase of the alert counter.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from inference.fairness import AGE_BANDS, GROUPS, SEXES, cell_key
from inference.metrics import wilson_ci
from integration.audit import AuditEvent, AuditLog, EventKind, SearchQuery, StoredEvent
from integration.audit.codec import EntryRow, decode
from integration.metrics import Metrics

if TYPE_CHECKING:
    from integration.settings import Settings

log = logging.getLogger(__name__)
_T = TypeVar("_T")

ACTOR = "fairness-monitor"
KINDS: tuple[str, ...] = (
    EventKind.ANALYSIS_FINISHED.value,
    EventKind.CDS_CARD_SHOWN.value,
    EventKind.CDS_FEEDBACK.value,
    EventKind.FAIRNESS_DRIFT.value,
)
#: ECGs (and card uuids) remembered to tie feedback to its analysis; older ones are looked
#: up in the log.
MEMORY = 200_000


def groups_of(sex: object, age_band: object) -> tuple[str, ...]:
    """The groups of an ECG with this sex and age band (unknown values are left out)."""
    s = sex if isinstance(sex, str) and sex in SEXES else None
    b = age_band if isinstance(age_band, str) and age_band in AGE_BANDS else None
    out = ["all"]
    out += [s] if s else []
    out += [b] if b else []
    out += [cell_key(s, b)] if s and b else []
    return tuple(out)


def outcome_evidence(*, positive: bool, overridden: bool, reason: object) -> str | None:
    """What one CDS feedback entry says about the ECG's outcome: ``"tp"``, ``"fn"``,
    ``"fp"``, ``"tn"``, or None when it says nothing (see the module docstring)."""
    if not overridden:
        return "tp" if positive else "tn"
    if reason == "disagree":
        return "fp" if positive else "fn"
    return None


def wilson_ci95(k: int, n: int) -> tuple[float, float] | None:
    """Wilson score 95% interval of k successes out of n (None when n is 0)."""
    ci = wilson_ci(k, n)
    return None if ci is None else (ci[0], ci[1])


@dataclass(frozen=True, slots=True)
class DriftConfig:
    """``window``: the last this many analyses of a group; ``min_n``: no judgement on fewer;
    ``bound``: the largest absolute difference from the reference rate that is not drift."""

    window: int = 200
    min_n: int = 50
    bound: float = 0.10

    def __post_init__(self) -> None:
        if not 1 <= self.min_n <= self.window:
            raise ValueError(f"need 1 <= min_n ({self.min_n}) <= window ({self.window})")
        if not 0.0 < self.bound < 1.0:
            raise ValueError(f"drift bound {self.bound} is not between 0 and 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> DriftConfig:
        return cls(
            window=settings.fairness_window,
            min_n=settings.fairness_min_n,
            bound=settings.fairness_drift_bound,
        )


@dataclass(frozen=True, slots=True)
class DriftAlert:
    """One excursion of a group's window positive rate. ``trigger_index`` is the audit index
    of the ``analysis.finished`` entry that took the rate out of bounds; ``index`` and
    ``recorded_at`` are those of the ``fairness.drift`` entry, once read from the log."""

    group: str
    trigger_index: int
    window_rate: float
    window_n: int
    reference_rate: float
    bound: float
    model_version: str | None
    index: int | None = None
    recorded_at: datetime | None = None

    @property
    def key(self) -> tuple[str, int]:
        return self.group, self.trigger_index

    def to_event(self) -> AuditEvent:
        return AuditEvent(
            kind=EventKind.FAIRNESS_DRIFT,
            actor=ACTOR,
            model_version=self.model_version,
            detail={
                "group": self.group,
                "trigger_index": self.trigger_index,
                "window_rate": round(self.window_rate, 6),
                "window_n": self.window_n,
                "reference_rate": round(self.reference_rate, 6),
                "bound": self.bound,
                "direction": "up" if self.window_rate > self.reference_rate else "down",
            },
        )

    @classmethod
    def from_event(cls, ev: StoredEvent) -> DriftAlert | None:
        """The alert of a ``fairness.drift`` entry (None when its detail is malformed)."""
        d = ev.detail
        group, trigger, n = d.get("group"), d.get("trigger_index"), d.get("window_n")
        rate, ref, bound = d.get("window_rate"), d.get("reference_rate"), d.get("bound")
        if not (isinstance(group, str) and isinstance(trigger, int) and isinstance(n, int)):
            return None
        if not (
            isinstance(rate, int | float)
            and isinstance(ref, int | float)
            and isinstance(bound, int | float)
        ):
            return None
        return cls(
            group=group,
            trigger_index=trigger,
            window_rate=float(rate),
            window_n=n,
            reference_rate=float(ref),
            bound=float(bound),
            model_version=ev.model_version,
            index=ev.index,
            recorded_at=ev.recorded_at,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "group": self.group,
            "window_rate": round(self.window_rate, 4),
            "window_n": self.window_n,
            "reference_rate": round(self.reference_rate, 4),
            "bound": self.bound,
            "trigger_index": self.trigger_index,
            "index": self.index,
            "recorded_at": None if self.recorded_at is None else self.recorded_at.isoformat(),
            "model_version": self.model_version,
        }


@dataclass(frozen=True, slots=True)
class GroupSummary:
    """One group's figures (see the module docstring for what each counts)."""

    group: str
    analysed: int
    positive: int
    not_analysed: int
    overrides: int
    window_n: int
    window_positive: int
    reference_rate: float | None
    drifting: bool
    alerts: int
    true_positive: int
    false_negative: int

    @property
    def positive_rate(self) -> float | None:
        return self.positive / self.analysed if self.analysed else None

    @property
    def window_rate(self) -> float | None:
        return self.window_positive / self.window_n if self.window_n else None

    @property
    def sensitivity_n(self) -> int:
        return self.true_positive + self.false_negative

    @property
    def sensitivity(self) -> float | None:
        n = self.sensitivity_n
        return self.true_positive / n if n else None

    def to_json(self) -> dict[str, object]:
        ci = wilson_ci95(self.true_positive, self.sensitivity_n)

        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {
            "group": self.group,
            "analysed": self.analysed,
            "positive": self.positive,
            "positive_rate": r(self.positive_rate),
            "not_analysed": self.not_analysed,
            "window_n": self.window_n,
            "window_rate": r(self.window_rate),
            "reference_rate": self.reference_rate,
            "drift": self.drifting,
            "alerts": self.alerts,
            "overrides": self.overrides,
            "true_positive": self.true_positive,
            "false_negative": self.false_negative,
            "sensitivity": r(self.sensitivity),
            "sensitivity_n": self.sensitivity_n,
            "sensitivity_ci95": None if ci is None else [round(ci[0], 4), round(ci[1], 4)],
        }


@dataclass(slots=True)
class _Ecg:
    groups: tuple[str, ...]
    finding: str | None  # "positive" / "negative" / None (not analysed)
    model_version: str | None
    counted: bool
    verdict: str | None = None


@dataclass(slots=True)
class _Group:
    window: deque[bool]
    analysed: int = 0
    positive: int = 0
    not_analysed: int = 0
    overrides: int = 0
    window_positive: int = 0
    drifting: bool = False
    alerts: int = 0
    verdicts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("tp", "fn", "fp", "tn"), 0)
    )


class FairnessCounts:
    """The counting and drift logic over audit events, no I/O (the functional core).

    ``reference`` maps groups to reference positive rates (a group without one is counted but
    never judged). With ``model_version`` set, entries of other versions are ignored.
    ``lookup`` finds an ``analysis.finished`` entry by ecg_id for feedback on an ECG this
    object has not seen (analysed before the period, or forgotten past ``memory``).
    """

    def __init__(
        self,
        *,
        reference: Mapping[str, float],
        config: DriftConfig | None = None,
        model_version: str | None = None,
        lookup: Callable[[str], StoredEvent | None] | None = None,
        memory: int = MEMORY,
    ) -> None:
        self.config = config or DriftConfig()
        self.reference = {g: float(v) for g, v in reference.items() if g in GROUPS}
        self.model_version = model_version
        self._lookup = lookup
        self._memory = memory
        self._groups = {g: _Group(window=deque(maxlen=self.config.window)) for g in GROUPS}
        self._ecgs: OrderedDict[str, _Ecg] = OrderedDict()
        self._cards: OrderedDict[str, str] = OrderedDict()

    def observe(self, ev: StoredEvent) -> list[DriftAlert]:
        """Take one entry (others than the kinds in `KINDS` are ignored); returns the drift
        excursions it started."""
        if ev.kind is EventKind.ANALYSIS_FINISHED:
            return self._analysis(ev)
        if ev.kind is EventKind.CDS_CARD_SHOWN:
            card = ev.detail.get("card")
            if isinstance(card, str) and ev.ecg_id:
                self._remember(self._cards, card, ev.ecg_id)
        elif ev.kind is EventKind.CDS_FEEDBACK:
            self._feedback(ev)
        return []

    def summary(self) -> list[GroupSummary]:
        return [
            GroupSummary(
                group=g,
                analysed=s.analysed,
                positive=s.positive,
                not_analysed=s.not_analysed,
                overrides=s.overrides,
                window_n=len(s.window),
                window_positive=s.window_positive,
                reference_rate=self.reference.get(g),
                drifting=s.drifting,
                alerts=s.alerts,
                true_positive=s.verdicts["tp"],
                false_negative=s.verdicts["fn"],
            )
            for g, s in self._groups.items()
        ]

    # -- internals -------------------------------------------------------------------------

    def wants(self, model_version: str | None) -> bool:
        """Is an entry of this model version monitored?"""
        return self.model_version is None or model_version == self.model_version

    def _remember(self, table: OrderedDict[str, _T], key: str, value: _T) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self._memory:
            table.popitem(last=False)

    @staticmethod
    def _ecg_of(ev: StoredEvent, *, counted: bool) -> _Ecg:
        finding = {"triage-positive": "positive", "triage-negative": "negative"}.get(
            ev.finding or ""
        )
        groups = groups_of(ev.detail.get("sex"), ev.detail.get("age_band"))
        return _Ecg(groups, finding, ev.model_version, counted)

    def _analysis(self, ev: StoredEvent) -> list[DriftAlert]:
        if not self.wants(ev.model_version):
            return []
        ecg = self._ecgs.get(ev.ecg_id) if ev.ecg_id else None
        if ecg is not None and ecg.counted:
            return []  # the same ECG analysed again (a retry after a crash): counted once
        new = self._ecg_of(ev, counted=True)
        if ecg is not None:  # seen through a lookup first: keep its feedback outcome
            new.verdict = ecg.verdict
        if ev.ecg_id:
            self._remember(self._ecgs, ev.ecg_id, new)
        alerts: list[DriftAlert] = []
        for g in new.groups:
            s = self._groups[g]
            if new.finding is None:
                s.not_analysed += 1
                continue
            positive = new.finding == "positive"
            s.analysed += 1
            s.positive += positive
            if len(s.window) == s.window.maxlen:
                s.window_positive -= s.window[0]
            s.window.append(positive)
            s.window_positive += positive
            alert = self._judge(g, s, ev)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _judge(self, group: str, s: _Group, ev: StoredEvent) -> DriftAlert | None:
        ref = self.reference.get(group)
        n = len(s.window)
        if ref is None or n < self.config.min_n:
            return None
        rate = s.window_positive / n
        off = round(abs(rate - ref), 9)  # an exact hit on the bound is not drift
        if s.drifting:
            if off <= self.config.bound / 2:
                s.drifting = False
            return None
        if off <= self.config.bound:
            return None
        s.drifting = True
        s.alerts += 1
        return DriftAlert(group, ev.index, rate, n, ref, self.config.bound, ev.model_version)

    def _resolve(self, ecg_id: str | None) -> _Ecg | None:
        if ecg_id is None:
            return None
        ecg = self._ecgs.get(ecg_id)
        if ecg is None and self._lookup is not None:
            found = self._lookup(ecg_id)
            if found is not None:
                ecg = self._ecg_of(found, counted=False)
                self._remember(self._ecgs, ecg_id, ecg)
        return ecg

    def _feedback(self, ev: StoredEvent) -> None:
        if ev.model_version is not None and not self.wants(ev.model_version):
            return
        card = ev.detail.get("card")
        ecg_id = ev.ecg_id or (self._cards.get(card) if isinstance(card, str) else None)
        ecg = self._resolve(ecg_id)
        if ecg is None:
            if ev.override:
                self._groups["all"].overrides += 1
            return
        if not self.wants(ecg.model_version):
            return
        if ev.override:
            for g in ecg.groups:
                self._groups[g].overrides += 1
        if ecg.finding is None:
            return
        verdict = outcome_evidence(
            positive=ecg.finding == "positive",
            overridden=ev.override,
            reason=ev.detail.get("override_reason"),
        )
        if verdict is None or verdict == ecg.verdict or ecg.verdict == "fn":
            return  # no evidence, nothing new, or a reported miss, which stands
        for g in ecg.groups:
            v = self._groups[g].verdicts
            if ecg.verdict is not None:
                v[ecg.verdict] -= 1
            v[verdict] += 1
        ecg.verdict = verdict


def decode_entry(row: EntryRow) -> StoredEvent | None:
    try:
        return decode(row.entry)
    except (ValueError, KeyError, TypeError):
        log.warning("audit entry %d does not parse; the fairness monitor skips it", row.index)
        return None


def analysis_lookup(audit: AuditLog) -> Callable[[str], StoredEvent | None]:
    def lookup(ecg_id: str) -> StoredEvent | None:
        q = SearchQuery(
            ecg_id=ecg_id,
            kinds=(EventKind.ANALYSIS_FINISHED.value,),
            newest_first=False,
            limit=1,
        )
        found = audit.search(q)
        return found[0] if found else None

    return lookup


class FairnessMonitor:
    """`FairnessCounts` fed incrementally from an `AuditLog` (the imperative shell).

    `poll` reads only the entries appended since the previous poll (it remembers the next
    index), writes the ``fairness.drift`` entries of new excursions (``emit``), and updates
    the Prometheus series of ``metrics``. One monitor per process; `poll` is thread-safe.
    """

    def __init__(
        self,
        audit: AuditLog,
        *,
        reference: Mapping[str, float],
        config: DriftConfig | None = None,
        model_version: str | None = None,
        metrics: Metrics | None = None,
        emit: bool = True,
        batch: int = 2000,
    ) -> None:
        self.counts = FairnessCounts(
            reference=reference,
            config=config,
            model_version=model_version,
            lookup=analysis_lookup(audit),
        )
        self._audit = audit
        self._metrics = metrics
        self._emit = emit
        self._batch = batch
        self._next: int | None = None
        self._known: set[tuple[str, int]] = set()
        self._unwritten: list[DriftAlert] = []
        self._synced: dict[str, tuple[int, int, int]] = {}
        self._lock = threading.Lock()
        self._sync_metrics([])

    @classmethod
    def for_service(
        cls, audit: AuditLog, *, settings: Settings, metrics: Metrics, model_version: str
    ) -> FairnessMonitor:
        """The monitor of `serve`: the shipped model's fold-9 reference rates."""
        from inference.fairness import reference_positive_rates

        reference = reference_positive_rates(
            model_version, group_thresholds=settings.fairness_group_thresholds
        )
        if not reference:
            log.warning(
                "no reference positive rates for model %s: the fairness monitor counts "
                "but does not judge drift",
                model_version,
            )
        return cls(
            audit,
            reference=reference,
            config=DriftConfig.from_settings(settings),
            model_version=model_version,
            metrics=metrics,
        )

    @property
    def next_index(self) -> int:
        """The first audit index not read yet."""
        return self._next or 0

    def summary(self) -> list[GroupSummary]:
        with self._lock:
            return self.counts.summary()

    def poll(self) -> list[DriftAlert]:
        """Read the entries appended since the last poll; returns the excursions this call
        alerted on (those another replica had already recorded are not repeated)."""
        with self._lock:
            found = self._read_new()
            self._sync_metrics(found)
            self._unwritten += [a for a in found if a.key not in self._known]
            fresh: list[DriftAlert] = []
            while self._unwritten:
                alert = self._unwritten[0]
                if alert.key not in self._known:
                    if self._emit:
                        self._audit.append(alert.to_event())  # raises: retried next poll
                    self._known.add(alert.key)
                    fresh.append(alert)
                    log.warning(
                        "fairness drift: group %s positive rate %.3f over its last %d ECGs, "
                        "reference %.3f (bound %.2f); triggered by audit entry %d",
                        alert.group,
                        alert.window_rate,
                        alert.window_n,
                        alert.reference_rate,
                        alert.bound,
                        alert.trigger_index,
                    )
                self._unwritten.pop(0)
            return fresh

    async def run(self, interval_s: float) -> None:
        """Poll now and every ``interval_s`` until cancelled (a task of `serve`)."""
        while True:
            try:
                await asyncio.to_thread(self.poll)
            except Exception:  # a database outage must not stop the listeners
                log.exception("fairness monitor poll failed; the next one retries")
            await asyncio.sleep(interval_s)

    def _start(self) -> int:
        # Archived entries may have been removed from the head of the store by a DBA.
        first = self._audit.store.search(SearchQuery(newest_first=False, limit=1))
        return first[0].index if first else 0

    def _read_new(self) -> list[DriftAlert]:
        if self._next is None:
            self._next = self._start()
        found: list[DriftAlert] = []
        while True:
            wanted = list(range(self._next, self._next + self._batch))
            read = 0
            for row in self._audit.store.rows(wanted):
                if row.index != self._next:
                    break  # committed indexes are contiguous; never expected
                self._next += 1
                read += 1
                if row.kind not in KINDS:
                    continue
                ev = decode_entry(row)
                if ev is None:
                    continue
                if ev.kind is EventKind.FAIRNESS_DRIFT:
                    alert = DriftAlert.from_event(ev)
                    if alert is not None:
                        self._known.add(alert.key)
                else:
                    found += self.counts.observe(ev)
            if read < self._batch:
                return found

    def _sync_metrics(self, alerts: list[DriftAlert]) -> None:
        m = self._metrics
        if m is None:
            return
        for a in alerts:
            m.fairness_drift_alert(a.group)
        for s in self.counts.summary():
            a0, p0, o0 = self._synced.get(s.group, (0, 0, 0))
            m.fairness_counts(
                s.group,
                analysed=s.analysed - a0,
                positive=s.positive - p0,
                overrides=s.overrides - o0,
            )
            self._synced[s.group] = (s.analysed, s.positive, s.overrides)
            m.fairness_window(
                s.group, positive_rate=s.window_rate, size=s.window_n, drifting=s.drifting
            )
