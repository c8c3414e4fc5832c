"""Server-rendered review pages (Jinja2, autoescaped): search, ECG report view, login.

The report view shows the chain of audited events of one ECG, each with its verification
status (`AuditLog.check_entry`: bytes vs leaf hash, chain to the neighbours, inclusion proof
to a signed tree head), the analysis outputs recorded in the ``analysis.finished`` entry
(triage, territory, explanation, fairness verdict) and the rendered ECG when available.
PHI is decrypted for display only; a token that cannot be decrypted shows as unreadable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from integration.audit.errors import PhiDecryptionError
from integration.audit.events import DetailValue, EventKind, StoredEvent
from integration.audit.log import AuditLog, EntryCheck

TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True, slots=True)
class Row:
    event: StoredEvent
    patient: str
    check: EntryCheck | None = None


class ReviewPages:
    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit
        self._env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def _patient(self, event: StoredEvent) -> str:
        try:
            p = self._audit.patient(event)
        except PhiDecryptionError:
            return "(unreadable)"
        return "" if p is None else p.identifier

    def login(self) -> str:
        return self._env.get_template("login.html").render(title="Reviewer sign-in")

    def search(
        self,
        reviewer: str,
        form: Mapping[str, str],
        results: Sequence[StoredEvent],
        *,
        searched: bool,
    ) -> str:
        rows = [Row(e, self._patient(e)) for e in results]
        return self._env.get_template("search.html").render(
            title="Audit review", reviewer=reviewer, form=form, rows=rows, searched=searched
        )

    def ecg(
        self, reviewer: str, ecg_id: str, events: Sequence[StoredEvent], *, has_image: bool
    ) -> str:
        rows = [Row(e, self._patient(e), self._audit.check_entry(e.index)) for e in events]
        analysis = next((e for e in events if e.kind is EventKind.ANALYSIS_FINISHED), None)
        detail: Mapping[str, DetailValue] = analysis.detail if analysis else {}
        territory = {
            k.removeprefix("territory_"): v for k, v in detail.items() if k.startswith("territory_")
        }
        failed = [r for r in rows if r.check is not None and not r.check.ok]
        patient = next((r.patient for r in rows if r.patient), "")
        return self._env.get_template("ecg.html").render(
            title=f"ECG {ecg_id}",
            reviewer=reviewer,
            ecg_id=ecg_id,
            rows=rows,
            analysis=analysis,
            detail=detail,
            territory=territory,
            failed=failed,
            patient=patient,
            has_image=has_image,
        )
