"""Member logits -> calibrated probabilities and per-prediction uncertainty.

The probability of a task is its calibration map applied to the mean of the members' logits
(the ensemble's logit). The uncertainty is the standard deviation of the members' calibrated
probabilities (a deep-ensemble spread, Lakshminarayanan et al. 2017); with one member there is
no estimate (None). Shared by the analyzer, `evaluate` and training, so every path scores alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from inference.calibration import Calibrator


@dataclass(frozen=True)
class Scores:
    """`probs` (n, tasks) calibrated; `sd` (n, tasks) member spread, `low` / `high` (n, tasks)
    the lowest and highest member probability; all three None with one member."""

    probs: npt.NDArray[np.float64]
    sd: npt.NDArray[np.float64] | None
    low: npt.NDArray[np.float64] | None = None
    high: npt.NDArray[np.float64] | None = None


def score(
    member_logits: npt.NDArray[np.float64],
    tasks: Sequence[str],
    calibration: Mapping[str, Calibrator],
) -> Scores:
    """`member_logits` (n, members, tasks) -> `Scores`."""
    n, members, n_tasks = member_logits.shape
    if n_tasks != len(tasks):
        raise ValueError(f"{n_tasks} logits per member but {len(tasks)} tasks")
    probs = np.empty((n, n_tasks), dtype=np.float64)
    member_probs = np.empty((n, members, n_tasks), dtype=np.float64)
    mean = member_logits.mean(axis=1)
    for i, task in enumerate(tasks):
        cal = calibration.get(task, Calibrator("none"))
        probs[:, i] = cal(mean[:, i])
        member_probs[:, :, i] = cal(member_logits[:, :, i])
    if members == 1:
        return Scores(probs=probs, sd=None)
    return Scores(
        probs=probs,
        sd=member_probs.std(axis=1, ddof=1),
        low=member_probs.min(axis=1),
        high=member_probs.max(axis=1),
    )
