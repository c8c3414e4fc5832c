"""The explanation and fairness sentences of the report conclusion and the CDS card."""

from __future__ import annotations

from mappers.explanation_text import explanation_summary, fairness_summary

EXPLANATION = {
    "attributions": [
        {"lead": "V2", "segment": "QRS", "share": 0.15},
        {"lead": "V3", "segment": "QRS", "share": 0.12},
        {"lead": "V1", "segment": "QRS", "share": 0.06},
        {"lead": "II", "segment": "T", "share": 0.05},
    ],
    "counterfactual": {
        "edits": [{"lead": "V3", "segment": "ST", "delta_mv": 0.5}],
        "valid": True,
        "original_probability": 0.08,
        "new_probability": 0.16,
    },
    "reason": None,
}


def test_drivers_and_the_flipping_edit() -> None:
    assert explanation_summary(EXPLANATION) == (
        "Main drivers: V2 QRS (15%), V3 QRS (12%), V1 QRS (6%). What would flip it: "
        "V3 ST +0.50 mV (MI probability 8% -> 16%)."
    )


def test_a_qrs_edit_names_its_wave() -> None:
    edits = [
        {"lead": "V2", "segment": "QRS", "wave": "Q", "delta_mv": -0.12},
        {"lead": "V3", "segment": "ST", "delta_mv": 0.1},
    ]
    cf = {"edits": edits, "valid": True, "original_probability": 0.08, "new_probability": 0.16}
    text = explanation_summary(EXPLANATION | {"counterfactual": cf})
    assert text is not None
    assert "What would flip it: V2 QRS (Q wave) -0.12 mV, V3 ST +0.10 mV" in text


def test_no_valid_counterfactual_is_said_plainly() -> None:
    text = explanation_summary(
        EXPLANATION | {"counterfactual": {"edits": [], "valid": False, "new_probability": 0.9}}
    )
    assert text is not None and text.endswith(
        "No plausible edit within the bounds flips this call."
    )


def test_refused_and_absent() -> None:
    refused: dict[str, object] = {
        "attributions": [],
        "counterfactual": None,
        "reason": "quality gate refused",
    }
    assert explanation_summary(refused) == "Explanation not available: quality gate refused."
    assert explanation_summary(None) is None
    assert explanation_summary({"attributions": [], "counterfactual": None}) is None


def test_fairness_sentence_only_when_sensitive() -> None:
    assert fairness_summary({"verdict": "stable", "max_shift": 0.01}) is None
    assert fairness_summary(None) is None
    assert (
        fairness_summary(
            {
                "verdict": "demographic-sensitive",
                "max_shift": 0.15,
                "max_shift_demographic": "female",
            }
        )
        == "Demographic-sensitive: for another sex (female) the model's probability moves by 15%."
    )
    assert "age band (<40)" in str(
        fairness_summary(
            {"verdict": "demographic-sensitive", "max_shift": 0.2, "max_shift_demographic": "<40"}
        )
    )
