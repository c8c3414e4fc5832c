"""PTB-XL SCP statements -> the label proxies the models are trained on.

Follows ../shared/data/README.md ("Labels the mission needs, and the honest proxies this data
supports"). There is no angiography here: every label is a cardiologist's ECG statement.

Choices (documented in MODEL_CARD.md):

* A statement counts when its code is present in ``scp_codes``, whatever its likelihood
  (PTB-XL's likelihood 0 means "not given", not "absent"). This matches the PTB-XL benchmark
  code (Wagner et al. 2020, Strodthoff et al. 2021).
* ``mi``: any MI or injury code (the README's list).
* Territories. *Anterior* (LAD) and *inferior* (RCA) follow the README's lists exactly.
  *Lateral* (LCx) follows the README's vessel rule rather than only its two lateral codes:
  "lateral (LMI, INJLA) -> LCx" **and** "inferior -> RCA (LCx when lateral ... codes
  co-occur)". So ``lateral`` is LMI, INJLA, and the inferior codes that name the lateral wall
  (ILMI, IPLMI, INJIL). Anterolateral codes (ALMI, INJAL) stay anterior only, as the README
  maps them to the LAD (diagonal branch). This raises lateral from 18 to about 70 records
  (6 on fold 9) while keeping its meaning "LCx territory"; the strict two-code definition
  (`LATERAL_STRICT_CODES`) had 16 training positives and 2 on fold 9, too few to learn or
  judge. Posterior-only codes (IPMI, PMI) get no territory: too rare (2 records).
* Territory labels are multi-label and not conditional on ``mi``: an inferolateral MI is
  positive for both ``inferior`` and ``lateral``.
* ``ischemia`` (acute-ischemia output): the README's ischaemia / ST codes ISC_, ISCAL, ISCAS,
  ISCLA, ISCIN, ISCIL, ISCAN, STD_, STE_, NST_. It does not include the injury codes (those are
  part of ``mi``) and it is a *statement* of ischaemic ST-T change, not of acuity.
* Rhythm: one binary output per rhythm statement with at least 50 training records in this
  subset: SR, AFIB, STACH, SARRH, SBRAD (PACE 25, AFLT 7 and the others are too rare).

`TASKS` (the triage and territory outputs) keeps its foundation meaning: ``PtbxlData.labels``
and the integration code index it. `HEAD_TASKS` is every output of the shipped model.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

TASKS: tuple[str, ...] = ("mi", "anterior", "inferior", "lateral")

#: Territory task -> culprit-vessel proxy (README): anterior -> LAD, inferior -> RCA,
#: lateral -> LCx. Mirrors `inference.result.TERRITORY_VESSEL`.
TASK_VESSEL: dict[str, str] = {"anterior": "LAD", "inferior": "RCA", "lateral": "LCx"}

ANTERIOR_CODES: frozenset[str] = frozenset({"AMI", "ASMI", "ALMI", "INJAS", "INJAL"})
INFERIOR_CODES: frozenset[str] = frozenset({"IMI", "ILMI", "IPMI", "IPLMI", "INJIN", "INJIL"})
#: The README's two lateral codes; kept for reporting the old definition.
LATERAL_STRICT_CODES: frozenset[str] = frozenset({"LMI", "INJLA"})
LATERAL_CODES: frozenset[str] = LATERAL_STRICT_CODES | frozenset({"ILMI", "IPLMI", "INJIL"})
MI_CODES: frozenset[str] = ANTERIOR_CODES | INFERIOR_CODES | LATERAL_CODES | frozenset({"PMI"})
ISCHEMIA_CODES: frozenset[str] = frozenset(
    {"ISC_", "ISCAL", "ISCAS", "ISCLA", "ISCIN", "ISCIL", "ISCAN", "STD_", "STE_", "NST_"}
)

#: Rhythm output -> (SCP code, display text).
RHYTHMS: dict[str, tuple[str, str]] = {
    "rhythm_sr": ("SR", "sinus rhythm"),
    "rhythm_afib": ("AFIB", "atrial fibrillation"),
    "rhythm_stach": ("STACH", "sinus tachycardia"),
    "rhythm_sarrh": ("SARRH", "sinus arrhythmia"),
    "rhythm_sbrad": ("SBRAD", "sinus bradycardia"),
}
RHYTHM_TASKS: tuple[str, ...] = tuple(RHYTHMS)
ISCHEMIA_TASK = "ischemia"
#: Every output of the shipped model, in logit order.
HEAD_TASKS: tuple[str, ...] = (*TASKS, ISCHEMIA_TASK, *RHYTHM_TASKS)

TASK_CODES: dict[str, frozenset[str]] = {
    "mi": MI_CODES,
    "anterior": ANTERIOR_CODES,
    "inferior": INFERIOR_CODES,
    "lateral": LATERAL_CODES,
    "lateral_strict": LATERAL_STRICT_CODES,
    ISCHEMIA_TASK: ISCHEMIA_CODES,
    **{task: frozenset({code}) for task, (code, _) in RHYTHMS.items()},
}


def parse_scp_codes(text: str) -> dict[str, float]:
    """Parse PTB-XL's ``scp_codes`` column (a Python dict literal: code -> likelihood)."""
    value = ast.literal_eval(text)
    if not isinstance(value, dict):
        raise ValueError(f"scp_codes is not a dict literal: {text[:60]!r}")
    return {str(k): float(v) for k, v in value.items()}


def task_labels(
    codes: Mapping[str, float], tasks: Sequence[str] = TASKS
) -> npt.NDArray[np.float32]:
    """One record's labels, shape (len(tasks),), 1.0 where any code of the task is present."""
    present = set(codes)
    return np.array([float(bool(present & TASK_CODES[t])) for t in tasks], dtype=np.float32)


def labels_from_scp(
    scp_codes: Iterable[str], tasks: Sequence[str] = TASKS
) -> npt.NDArray[np.float32]:
    """Labels for many records from their raw ``scp_codes`` strings, shape (n, len(tasks))."""
    unknown = [t for t in tasks if t not in TASK_CODES]
    if unknown:
        raise KeyError(f"unknown task(s) {unknown}")
    rows = [task_labels(parse_scp_codes(s), tasks) for s in scp_codes]
    if not rows:
        return np.zeros((0, len(tasks)), dtype=np.float32)
    return np.stack(rows)
