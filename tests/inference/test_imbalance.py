"""Class weighting and the DRIL schedule."""

from __future__ import annotations

import numpy as np
import pytest

from inference.imbalance import MAX_POS_WEIGHT, dril_plan, epoch_plan, n_clusters_for, pos_weights


def test_pos_weights() -> None:
    labels = np.zeros((100, 3), dtype=np.float32)
    labels[:25, 0] = 1  # 3:1
    labels[:90, 1] = 1  # majority positive -> 1
    labels[:1, 2] = 1  # 99:1 -> clipped
    np.testing.assert_allclose(pos_weights(labels), [3.0, 1.0, MAX_POS_WEIGHT])


def test_dril_plan_splits_the_majority() -> None:
    rng = np.random.default_rng(0)
    y = np.zeros(120, dtype=np.float32)
    y[:30] = 1
    centres = np.repeat(np.eye(3) * 10, 30, axis=0)
    feats = np.concatenate([rng.normal(size=(30, 3)), centres + rng.normal(size=(90, 3))])
    assert n_clusters_for(y) == 3
    plan = dril_plan(y, feats, seed=0)
    assert plan.minority.tolist() == list(range(30))
    assert sorted(c.size for c in plan.clusters) == [30, 30, 30]
    assert np.array_equal(np.sort(np.concatenate(plan.clusters)), np.arange(30, 120))
    sub = plan.subset(1)
    assert set(range(30)) <= set(sub.tolist()) and sub.size == 60


def test_epoch_plan_matches_visits() -> None:
    y = np.zeros(100, dtype=np.float32)
    y[:25] = 1
    rng = np.random.default_rng(0)
    plain, total = epoch_plan(
        strategy="none",
        primary_labels=y,
        epochs=4,
        warmup_epochs=1,
        make_dril_plan=None,
        rng=rng,
    )
    assert len(plain) == 4 and total == 400
    assert sorted(plain[0]().tolist()) == list(range(100))
    calls: list[int] = []

    def make() -> object:
        calls.append(1)
        return dril_plan(y, rng.normal(size=(100, 4)), seed=0)

    dril, total = epoch_plan(
        strategy="dril",
        primary_labels=y,
        epochs=4,
        warmup_epochs=1,
        make_dril_plan=make,  # type: ignore[arg-type]
        rng=rng,
    )
    assert total == pytest.approx(400, rel=0.1)
    assert not calls  # lazy: clustering waits for the warm-up
    sizes = [len(f()) for f in dril]
    assert sizes[0] == 100 and sizes[-1] == 100
    assert all(s < 100 for s in sizes[1:-1])
    assert len(calls) == 1
    with pytest.raises(ValueError, match="clustering"):
        epoch_plan(
            strategy="dril",
            primary_labels=y,
            epochs=2,
            warmup_epochs=1,
            make_dril_plan=None,
            rng=rng,
        )
