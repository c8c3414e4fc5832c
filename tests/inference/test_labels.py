from __future__ import annotations

import numpy as np

from inference.labels import MI_CODES, TASK_VESSEL, TASKS, labels_from_scp, parse_scp_codes


def test_tasks_and_vessels() -> None:
    assert TASKS == ("mi", "anterior", "inferior", "lateral")
    assert TASK_VESSEL == {"anterior": "LAD", "inferior": "RCA", "lateral": "LCx"}
    assert len(MI_CODES) == 14


def test_labels_follow_readme_proxies() -> None:
    rows = [
        "{'NORM': 100.0, 'SR': 0.0}",
        "{'ASMI': 100.0}",
        "{'ALMI': 50.0}",  # anterolateral -> anterior (LAD) only
        "{'ILMI': 100.0}",  # inferolateral -> inferior (RCA) only
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
            [1, 0, 1, 0],
            [1, 0, 0, 1],
            [1, 0, 0, 1],
            [1, 0, 0, 0],
            [1, 0, 1, 0],
            [0, 0, 0, 0],
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(labels_from_scp(rows), expected)


def test_parse_scp_codes() -> None:
    assert parse_scp_codes("{'IMI': 15.0, 'SR': 0}") == {"IMI": 15.0, "SR": 0.0}
    assert labels_from_scp([]).shape == (0, 4)
