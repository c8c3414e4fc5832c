"""Explanations of the triage decision (issue 7): integrated-gradient attributions per
(lead, segment), a counterfactual per-lead ST / T / QRS edit that flips the decision, and
distilled IF-THEN rules that explain the counterfactual explainer. Entry point: `Explainer`."""

from inference.explain.attribution import Attribution, DeletionResult, deletion_test
from inference.explain.counterfactual import (
    MAX_QRS_DELTA_MV,
    MAX_ST_SHIFT_MV,
    MAX_T_DELTA_MV,
    Q_SCALE_RANGE,
    R_SCALE_RANGE,
    Edit,
)
from inference.explain.explainer import (
    Counterfactual,
    ExplainConf,
    Explainer,
    Explanation,
    HighlightSpan,
    measure,
)
from inference.explain.rules import RulesError, RuleTree, load_rules
from inference.explain.segments import measurements

__all__ = [
    "MAX_QRS_DELTA_MV",
    "MAX_ST_SHIFT_MV",
    "MAX_T_DELTA_MV",
    "Q_SCALE_RANGE",
    "R_SCALE_RANGE",
    "Attribution",
    "Counterfactual",
    "DeletionResult",
    "Edit",
    "ExplainConf",
    "Explainer",
    "Explanation",
    "HighlightSpan",
    "RuleTree",
    "RulesError",
    "deletion_test",
    "load_rules",
    "measure",
    "measurements",
]
