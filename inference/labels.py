"""PTB-XL SCP statements -> the label proxies the models are trained on.

Follows ../shared/data/README.md ("Labels the mission needs, and the honest proxies this data
supports"). There is no angiography here: every label is a cardiologist's ECG statement.

Choices (documented in MODEL_CARD.md):

* A statement counts when its code is present in ``scp_codes``, whatever its likelihood
  (PTB-XL's likelihood 0 means "not given", not "absent"). This matches the PTB-XL benchmark
  code (Wagner et al. 2020, Strodthoff et al. 2021). In the shipped data no MI or injury code
  carries likelihood 0, so the choice changes no label there.
* Territories follow the README's lists exactly. Combined codes count for the territory the
  README puts them in: ALMI and INJAL are *anterior* (LAD), ILMI, IPLMI and INJIL are
  *inferior* (RCA). *Lateral* (LCx) is LMI and INJLA only. That makes lateral rare
  (18 of 2,277 records, 2 in fold 9): its output is experimental and its metrics are not
  meaningful. PMI (posterior) counts for ``mi`` but has no territory output (1 record).
* Territory labels are not mutually exclusive and are not conditional on ``mi``: the model
  estimates P(anterior MI/injury present), etc.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

TASKS: tuple[str, ...] = ("mi", "anterior", "inferior", "lateral")

#: Territory task -> culprit-vessel proxy (README): anterior -> LAD, inferior -> RCA,
#: lateral -> LCx. Mirrors `inference.result.TERRITORY_VESSEL`.
TASK_VESSEL: dict[str, str] = {"anterior": "LAD", "inferior": "RCA", "lateral": "LCx"}

ANTERIOR_CODES: frozenset[str] = frozenset({"AMI", "ASMI", "ALMI", "INJAS", "INJAL"})
INFERIOR_CODES: frozenset[str] = frozenset({"IMI", "ILMI", "IPMI", "IPLMI", "INJIN", "INJIL"})
LATERAL_CODES: frozenset[str] = frozenset({"LMI", "INJLA"})
MI_CODES: frozenset[str] = ANTERIOR_CODES | INFERIOR_CODES | LATERAL_CODES | frozenset({"PMI"})

TASK_CODES: dict[str, frozenset[str]] = {
    "mi": MI_CODES,
    "anterior": ANTERIOR_CODES,
    "inferior": INFERIOR_CODES,
    "lateral": LATERAL_CODES,
}


def parse_scp_codes(text: str) -> dict[str, float]:
    """Parse PTB-XL's ``scp_codes`` column (a Python dict literal: code -> likelihood)."""
    value = ast.literal_eval(text)
    if not isinstance(value, dict):
        raise ValueError(f"scp_codes is not a dict literal: {text[:60]!r}")
    return {str(k): float(v) for k, v in value.items()}


def task_labels(codes: Mapping[str, float]) -> npt.NDArray[np.float32]:
    """One record's labels, shape (len(TASKS),), 1.0 where any code of the task is present."""
    present = set(codes)
    return np.array([float(bool(present & TASK_CODES[t])) for t in TASKS], dtype=np.float32)


def labels_from_scp(scp_codes: Iterable[str]) -> npt.NDArray[np.float32]:
    """Labels for many records from their raw ``scp_codes`` strings, shape (n, len(TASKS))."""
    rows = [task_labels(parse_scp_codes(s)) for s in scp_codes]
    if not rows:
        return np.zeros((0, len(TASKS)), dtype=np.float32)
    return np.stack(rows)
