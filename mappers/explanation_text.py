"""The explanation of an analysis in one or two plain sentences, for the report's conclusion
and the CDS Hooks card. Pure: the explanation JSON (`ecgbridge analyze --json` "explanation",
`inference.explain.Explanation.to_json`) and the fairness JSON in, text out.

    Main drivers: V2 QRS (15%), V3 QRS (12%), V1 QRS (6%). What would flip it: V3 ST
    +0.50 mV (MI probability 8% -> 16%).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: How many attributed (lead, segment) units the sentence names.
TOP_DRIVERS = 3


def _edit(edit: Mapping[str, Any]) -> str:
    wave = f" ({edit['wave']} wave)" if edit.get("wave") else ""
    return f"{edit['lead']} {edit['segment']}{wave} {float(edit['delta_mv']):+.2f} mV"


def explanation_summary(explanation: Mapping[str, Any] | None) -> str | None:
    """One or two sentences naming the main drivers and the flipping edit; None when there
    is nothing to say (no explanation, or it was refused without a reason)."""
    if not explanation:
        return None
    reason = explanation.get("reason")
    attributions: Sequence[Mapping[str, Any]] = explanation.get("attributions") or ()
    parts: list[str] = []
    if attributions:
        top = ", ".join(
            f"{a['lead']} {a['segment']} ({float(a['share']):.0%})"
            for a in attributions[:TOP_DRIVERS]
        )
        parts.append(f"Main drivers: {top}.")
    cf = explanation.get("counterfactual")
    if cf:
        edits: Sequence[Mapping[str, Any]] = cf.get("edits") or ()
        if cf.get("valid") and edits:
            parts.append(
                "What would flip it: "
                + ", ".join(_edit(e) for e in edits)
                + f" (MI probability {float(cf['original_probability']):.0%} -> "
                f"{float(cf['new_probability']):.0%})."
            )
        else:
            parts.append("No plausible edit within the bounds flips this call.")
    if not parts:
        return f"Explanation not available: {reason}." if reason else None
    return " ".join(parts)


def fairness_summary(fairness: Mapping[str, Any] | None) -> str | None:
    """A sentence when the call is demographic-sensitive; None when stable or absent."""
    if not fairness or fairness.get("verdict") != "demographic-sensitive":
        return None
    return (
        "Demographic-sensitive: for another "
        f"{'sex' if fairness.get('max_shift_demographic') in ('male', 'female') else 'age band'} "
        f"({fairness.get('max_shift_demographic')}) the model's probability moves by "
        f"{float(fairness['max_shift']):.0%}."
    )
