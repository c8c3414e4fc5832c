"""Class-imbalance strategies compared in training (see MODEL_CARD.md for the results).

* ``none``: plain multi-task BCE over shuffled epochs of all records.
* ``pos_weight``: BCE with a per-task positive weight n_neg / n_pos (clipped to
  [1, `MAX_POS_WEIGHT`]), i.e. class weighting.
* ``dril``: clustering-based incremental learning in the spirit of DRIL (Liu et al.,
  Knowledge-Based Systems 292, 2024): after a warm-up on all records, the majority class of the
  primary task (records without ``mi``) is split into K = round(n_neg / n_pos) similar,
  equally large sub-groups by two-step clustering (`dril_plan`) of the warm-up network's
  pooled features, and training goes on
  incrementally over K balanced sub-datasets, each "all minority records + one majority
  sub-group", in turn, cycling, ending with one epoch over all records. The total number of
  optimiser steps matches the plain schedule. Other tasks' losses are computed on the same
  records.

`epoch_plan` gives the record indices of every epoch, so the training loop stays one loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

STRATEGIES: tuple[str, ...] = ("none", "pos_weight", "dril")
MAX_POS_WEIGHT = 20.0


def pos_weights(labels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """n_neg / n_pos per task, clipped to [1, MAX_POS_WEIGHT] (1 where a class is absent)."""
    n_pos = labels.sum(axis=0).astype(np.float64)
    n_neg = labels.shape[0] - n_pos
    ratio = np.divide(n_neg, n_pos, out=np.ones_like(n_pos), where=n_pos > 0)
    out: npt.NDArray[np.float32] = np.clip(ratio, 1.0, MAX_POS_WEIGHT).astype(np.float32)
    return out


@dataclass(frozen=True)
class DrilPlan:
    """The sub-datasets: `clusters[k]` are the majority-record indices of sub-group k."""

    minority: npt.NDArray[np.int64]
    clusters: tuple[npt.NDArray[np.int64], ...]

    def subset(self, k: int) -> npt.NDArray[np.int64]:
        return np.sort(np.concatenate([self.minority, self.clusters[k % len(self.clusters)]]))

    def summary(self) -> dict[str, object]:
        return {
            "n_minority": int(self.minority.size),
            "cluster_sizes": [c.size for c in self.clusters],
        }


def dril_plan(
    primary_labels: npt.NDArray[np.float32],
    features: npt.NDArray[np.float64],
    *,
    seed: int,
    n_clusters: int | None = None,
    fine_per_group: int = 4,
) -> DrilPlan:
    """Split the majority class of `primary_labels` (0/1 per record) into K similar, equally
    large sub-groups by two-step clustering on `features`:

    1. k-means into ``fine_per_group * K`` fine clusters (standardised features);
    2. the records, ordered by their fine cluster's place along the first principal component
       of the cluster centres (then by their own projection), are cut into K runs of equal
       size, so neighbouring fine clusters share a sub-group.

    Plain k-means with K clusters gave sub-groups of 887, 40 and 609 records on PTB-XL
    folds 1-8; the 40-record sub-dataset (474 minority vs 40 majority) wrecked the network
    during its epochs (fold-9 MI AUROC fell to 0.43). Step 2 keeps the sub-groups balanced.
    """
    from sklearn.cluster import KMeans

    y = np.asarray(primary_labels) > 0.5
    minority_is_pos = y.sum() <= (~y).sum()
    minority = np.flatnonzero(y if minority_is_pos else ~y)
    majority = np.flatnonzero(~y if minority_is_pos else y)
    k = n_clusters or n_clusters_for(primary_labels)
    k = max(1, min(k, majority.size))
    feats = features[majority]
    feats = (feats - feats.mean(axis=0)) / (feats.std(axis=0) + 1e-6)
    n_fine = max(k, min(fine_per_group * k, majority.size))
    km = KMeans(n_clusters=n_fine, n_init=10, random_state=seed).fit(feats)
    centres = km.cluster_centers_ - km.cluster_centers_.mean(axis=0)
    axis = np.linalg.svd(centres, full_matrices=False)[2][0]
    rank_of_fine = np.empty(n_fine, dtype=np.int64)
    rank_of_fine[np.argsort(centres @ axis, kind="stable")] = np.arange(n_fine)
    # records ordered by their fine cluster's place along the axis, then by their own
    # projection; cut into K equal runs (a fine cluster may straddle two sub-groups)
    order = np.lexsort((feats @ axis, rank_of_fine[km.labels_]))
    assign = np.empty(majority.size, dtype=np.int64)
    assign[order] = np.arange(majority.size) * k // majority.size
    clusters = tuple(majority[assign == c] for c in range(k) if (assign == c).any())
    plan = DrilPlan(minority=minority, clusters=clusters)
    logger.info("DRIL sub-groups: %s", plan.summary())
    return plan


def n_clusters_for(primary_labels: npt.NDArray[np.float32]) -> int:
    """K = round(n_majority / n_minority), at least 2."""
    y = np.asarray(primary_labels) > 0.5
    n_min = max(1, min(int(y.sum()), int((~y).sum())))
    n_maj = max(int(y.sum()), int((~y).sum()))
    return max(2, round(n_maj / n_min))


EpochOrder = Callable[[], npt.NDArray[np.int64]]


def epoch_plan(
    *,
    strategy: str,
    primary_labels: npt.NDArray[np.float32],
    epochs: int,
    warmup_epochs: int,
    make_dril_plan: Callable[[], DrilPlan] | None,
    rng: np.random.Generator,
) -> tuple[list[EpochOrder], int]:
    """One callable per epoch returning that epoch's shuffled record order, and the expected
    total number of record visits (for the learning-rate schedule).

    DRIL epochs are built lazily: the clustering needs the warm-up network, so it runs when
    the first incremental epoch starts. The number of incremental epochs is chosen so that the
    record visits match `epochs` plain epochs."""
    n_records = int(primary_labels.shape[0])

    def full() -> npt.NDArray[np.int64]:
        return rng.permutation(n_records).astype(np.int64)

    if strategy != "dril":
        return [full for _ in range(epochs)], epochs * n_records
    if make_dril_plan is None:
        raise ValueError("DRIL needs a clustering callback")
    warmup_epochs = min(warmup_epochs, max(0, epochs - 1))
    y = np.asarray(primary_labels) > 0.5
    n_min = min(int(y.sum()), int((~y).sum()))
    k = n_clusters_for(primary_labels)
    subset_size = n_min + (n_records - n_min) / k
    incremental_visits = max(0, epochs - warmup_epochs - 1) * n_records
    n_incremental = round(incremental_visits / max(1.0, subset_size))
    state: dict[str, DrilPlan] = {}

    def plan() -> DrilPlan:
        if "plan" not in state:
            state["plan"] = make_dril_plan()
        return state["plan"]

    def sub(kk: int) -> EpochOrder:
        return lambda: rng.permutation(plan().subset(kk)).astype(np.int64)

    schedule: list[EpochOrder] = [full for _ in range(warmup_epochs)]
    schedule += [sub(i) for i in range(n_incremental)]
    schedule.append(full)
    total = round((warmup_epochs + 1) * n_records + n_incremental * subset_size)
    return schedule, total
