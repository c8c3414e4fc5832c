"""Explain the explainer: IF-THEN rules distilled from the counterfactual search.

A depth-limited decision tree (fitted by `inference.explain.distill` with sklearn) predicts
the counterfactual explainer's *first* edit (lead group + segment: ST, T or QRS, the
last for a Q-wave or R-wave edit) from the delineation
measurements of the ECG (per-lead ST at J+60 ms, T amplitude, QRS duration, heart rate,
QTc) and the triage decision. The tree travels as JSON (`RuleTree`) and is evaluated here
without sklearn: at an internal node go left when ``float32(value) <= threshold`` (sklearn
compares float32 features with its float64 thresholds the same way); a missing measurement
takes the training median stored with the tree. Its fidelity (agreement with the explainer)
on fold-9 records is stored with it.

The shipped file is ``inference/weights/explainer-rules-<model_version>.json``; rules fitted
for another model version are refused (`RulesError`).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.errors import EcgBridgeError
from inference.explain.segments import MeasurementsJson
from inference.record import LEADS_12

RULES_FORMAT = "ecgbridge-explainer-rules-v1"
RULES_DIR = Path(__file__).resolve().parents[1] / "weights"

#: Lead groups the first-edit classes use (24 lead x segment classes are too many for a
#: depth-3 tree and too few records each).
LEAD_GROUPS: dict[str, tuple[str, ...]] = {
    "V1-V3": ("V1", "V2", "V3"),
    "V4-V6": ("V4", "V5", "V6"),
    "I/aVL": ("I", "aVL"),
    "II/III/aVF": ("II", "III", "aVF"),
    "aVR": ("aVR",),
}
_GROUP_OF = {lead: group for group, leads in LEAD_GROUPS.items() for lead in leads}


class RulesError(EcgBridgeError, ValueError):
    """The rules file is malformed or belongs to another model version."""


def lead_group(lead: str) -> str:
    return _GROUP_OF[lead]


def edit_class(lead: str, segment: str) -> str:
    """The class of a first edit, e.g. ``"V1-V3 ST"``."""
    return f"{lead_group(lead)} {segment}"


def feature_names() -> tuple[str, ...]:
    per_lead = tuple(f"{m}({lead})" for lead in LEADS_12 for m in ("ST", "T", "QRS"))
    return (*per_lead, "HR", "QTc", "triage positive")


def _unit(name: str) -> str:
    if name.startswith(("ST(", "T(")):
        return "mV"
    if name == "HR":
        return "bpm"
    return "" if name == "triage positive" else "ms"


def features(measured: MeasurementsJson, *, triage_positive: bool) -> npt.NDArray[np.float64]:
    """The tree's inputs in `feature_names` order from the measurements contract
    (`inference.explain.segments.measurements`); NaN where a measurement is missing."""

    def v(x: float | None) -> float:
        return math.nan if x is None else float(x)

    values: list[float] = []
    for lead in LEADS_12:
        m = measured["per_lead"].get(lead)
        values += [math.nan] * 3 if m is None else [v(m["st_mv"]), v(m["t_mv"]), v(m["qrs_ms"])]
    values += [v(measured["hr_bpm"]), v(measured["qtc_ms"]), 1.0 if triage_positive else 0.0]
    return np.asarray(values, dtype=np.float64)


@dataclass(frozen=True)
class Node:
    """Internal node (`feature` >= 0: left when value <= `threshold`) or leaf (`feature`
    == -1, predicting ``classes[value]``); `n` training records reached it."""

    feature: int
    threshold: float
    left: int
    right: int
    value: int
    n: int


def _condition(name: str, op: str, threshold: float) -> str:
    if name == "triage positive":
        return "triage positive" if op == ">" else "triage negative"
    unit = _unit(name)
    digits = 2 if unit == "mV" else 0
    return f"{name} {op} {threshold:.{digits}f} {unit}".rstrip()


@dataclass(frozen=True)
class RuleTree:
    """A distilled decision tree, evaluable without sklearn; JSON round-trips."""

    model_version: str
    feature_names: tuple[str, ...]
    classes: tuple[str, ...]
    impute: tuple[float, ...]
    nodes: tuple[Node, ...]
    fidelity: float | None
    info: dict[str, Any] = field(default_factory=dict)

    def path(self, x: npt.ArrayLike) -> list[int]:
        """Node indices from the root to the leaf `x` (features, NaN = missing) reaches."""
        values = np.asarray(x, dtype=np.float64)
        if values.shape != (len(self.feature_names),):
            raise ValueError(f"expected {len(self.feature_names)} features, got {values.shape}")
        i, out = 0, [0]
        while self.nodes[i].feature >= 0:
            node = self.nodes[i]
            v = values[node.feature]
            if not math.isfinite(v):
                v = self.impute[node.feature]
            i = node.left if float(np.float32(v)) <= node.threshold else node.right
            out.append(i)
        return out

    def predict(self, x: npt.ArrayLike) -> str:
        return self.classes[self.nodes[self.path(x)[-1]].value]

    def _rule_of_path(self, path: Sequence[int]) -> str:
        # tightest bound per feature and direction, in the order features first appear
        bounds: dict[tuple[int, str], float] = {}
        for parent, child in itertools.pairwise(path):
            node = self.nodes[parent]
            op = "<=" if child == node.left else ">"
            key = (node.feature, op)
            old = bounds.get(key)
            if (
                old is None
                or (op == "<=" and node.threshold < old)
                or (op == ">" and node.threshold > old)
            ):
                bounds[key] = node.threshold
        conds = [_condition(self.feature_names[f], op, t) for (f, op), t in bounds.items()]
        then = f"first edit on {self.classes[self.nodes[path[-1]].value]}"
        return f"IF {' AND '.join(conds)} THEN {then}" if conds else f"ALWAYS {then}"

    def rule(self, x: npt.ArrayLike) -> str:
        """The IF-THEN rule that fires for `x`."""
        return self._rule_of_path(self.path(x))

    def rules(self) -> list[str]:
        """Every leaf's rule, left to right."""
        out: list[str] = []

        def walk(i: int, path: list[int]) -> None:
            node = self.nodes[i]
            if node.feature < 0:
                out.append(self._rule_of_path(path))
                return
            walk(node.left, [*path, node.left])
            walk(node.right, [*path, node.right])

        walk(0, [0])
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RULES_FORMAT,
            "model_version": self.model_version,
            "features": list(self.feature_names),
            "classes": list(self.classes),
            "impute": list(self.impute),
            "nodes": [
                {"leaf": n.value, "n": n.n}
                if n.feature < 0
                else {
                    "feature": n.feature,
                    "threshold": n.threshold,
                    "left": n.left,
                    "right": n.right,
                    "n": n.n,
                }
                for n in self.nodes
            ],
            "fidelity": self.fidelity,
            "rules": self.rules(),
            "info": self.info,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RuleTree:
        try:
            if data["format"] != RULES_FORMAT:
                raise RulesError(f"unknown rules format {data['format']!r}")
            nodes = tuple(
                Node(-1, math.nan, -1, -1, int(n["leaf"]), int(n["n"]))
                if "leaf" in n
                else Node(
                    int(n["feature"]),
                    float(n["threshold"]),
                    int(n["left"]),
                    int(n["right"]),
                    -1,
                    int(n["n"]),
                )
                for n in data["nodes"]
            )
            fidelity = data.get("fidelity")
            return cls(
                model_version=str(data["model_version"]),
                feature_names=tuple(str(f) for f in data["features"]),
                classes=tuple(str(c) for c in data["classes"]),
                impute=tuple(float(v) for v in data["impute"]),
                nodes=nodes,
                fidelity=None if fidelity is None else float(fidelity),
                info=dict(data.get("info", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, RulesError):
                raise
            raise RulesError(f"malformed rules JSON: {exc}") from exc

    @classmethod
    def from_sklearn(
        cls,
        tree: Any,
        *,
        model_version: str,
        feature_names: Sequence[str],
        impute: Sequence[float],
        fidelity: float | None = None,
        info: dict[str, Any] | None = None,
    ) -> RuleTree:
        """From a fitted ``sklearn.tree.DecisionTreeClassifier``."""
        t = tree.tree_
        nodes = tuple(
            Node(-1, math.nan, -1, -1, int(np.argmax(t.value[i][0])), int(t.n_node_samples[i]))
            if t.children_left[i] < 0
            else Node(
                int(t.feature[i]),
                float(t.threshold[i]),
                int(t.children_left[i]),
                int(t.children_right[i]),
                -1,
                int(t.n_node_samples[i]),
            )
            for i in range(t.node_count)
        )
        return cls(
            model_version=model_version,
            feature_names=tuple(feature_names),
            classes=tuple(str(c) for c in tree.classes_),
            impute=tuple(float(v) for v in impute),
            nodes=nodes,
            fidelity=fidelity,
            info=dict(info or {}),
        )


def rules_path(model_version: str, directory: Path = RULES_DIR) -> Path:
    """Where the rules of `model_version` live: ``explainer-rules-<model_version>.json``."""
    return directory / f"explainer-rules-{model_version}.json"


def load_rules(model_version: str, directory: Path = RULES_DIR) -> RuleTree | None:
    """The shipped rules of `model_version`, or None when there is no file. Raises
    `RulesError` when the file is malformed or names another model version."""
    path = rules_path(model_version, directory)
    if not path.is_file():
        return None
    tree = RuleTree.from_json(json.loads(path.read_text(encoding="utf-8")))
    if tree.model_version != model_version:
        raise RulesError(f"{path.name} was fitted for {tree.model_version}, not {model_version}")
    if tree.feature_names != feature_names():
        raise RulesError(f"{path.name} uses other features than this explainer")
    return tree
