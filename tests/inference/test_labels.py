from __future__ import annotations

import numpy as np
import pytest

from inference.labels import (
    HEAD_TASKS,
    ISCHEMIA_CODES,
    LATERAL_CODES,
    LATERAL_STRICT_CODES,
    MI_CODES,
    RHYTHM_TASKS,
    TASK_VESSEL,
    TASKS,
    labels_from_scp,
    parse_scp_codes,
)


def test_tasks_and_vessels() -> None:
    assert TASKS == ("mi", "anterior", "inferior", "lateral")
    assert HEAD_TASKS[:4] == TASKS
    assert HEAD_TASKS[4] == "ischemia"
    assert set(RHYTHM_TASKS) == {
        "rhythm_sr",
        "rhythm_afib",
        "rhythm_stach",
        "rhythm_sarrh",
        "rhythm_sbrad",
    }
    assert TASK_VESSEL == {"anterior": "LAD", "inferior": "RCA", "lateral": "LCx"}
    assert len(MI_CODES) == 14
    assert LATERAL_STRICT_CODES < LATERAL_CODES
    assert not ISCHEMIA_CODES & MI_CODES


def test_labels_follow_readme_proxies() -> None:
    rows = [
        "{'NORM': 100.0, 'SR': 0.0}",
        "{'ASMI': 100.0}",
        "{'ALMI': 50.0}",  # anterolateral -> anterior (LAD) only, as the README maps it
        "{'ILMI': 100.0}",  # inferolateral -> inferior (RCA) and lateral (LCx)
        "{'LMI': 15.0}",
        "{'INJLA': 100.0}",
        "{'PMI': 100.0}",  # posterior: MI, no territory
        "{'IMI': 0.0}",  # likelihood 0 still counts
        "{'ISCAL': 100.0, 'STD_': 100.0}",  # ischaemia is not MI
    ]
    expected = np.array(
        [
            [0, 0, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 0, 0],
            [1, 0, 1, 1],
            [1, 0, 0, 1],
            [1, 0, 0, 1],
            [1, 0, 0, 0],
            [1, 0, 1, 0],
            [0, 0, 0, 0],
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(labels_from_scp(rows), expected)


def test_head_labels() -> None:
    rows = [
        "{'NORM': 100.0, 'SR': 0.0}",
        "{'NST_': 100.0, 'STACH': 0.0}",
        "{'ASMI': 100.0, 'AFIB': 0.0}",
        "{'PACE': 0.0}",  # paced: no rhythm output is positive
    ]
    got = labels_from_scp(rows, HEAD_TASKS)
    assert got.shape == (4, len(HEAD_TASKS))
    col = {t: i for i, t in enumerate(HEAD_TASKS)}
    assert got[0, col["rhythm_sr"]] == 1 and got[0].sum() == 1
    assert got[1, col["ischemia"]] == 1 and got[1, col["rhythm_stach"]] == 1
    assert got[2, col["mi"]] == 1 and got[2, col["rhythm_afib"]] == 1
    assert got[3].sum() == 0
    assert labels_from_scp(["{'LMI': 1.0}", "{'ILMI': 1.0}"], ["lateral_strict"]).tolist() == [
        [1.0],
        [0.0],
    ]


def test_unknown_task() -> None:
    with pytest.raises(KeyError):
        labels_from_scp(["{}"], ["nope"])


def test_parse_scp_codes() -> None:
    assert parse_scp_codes("{'IMI': 15.0, 'SR': 0}") == {"IMI": 15.0, "SR": 0.0}
    assert labels_from_scp([]).shape == (0, 4)
    with pytest.raises(ValueError, match="dict"):
        parse_scp_codes("[1, 2]")
