"""Typed, hash-pinned model weights (in the style of torchvision's ``Weights``).

A weights artifact is two files in one directory:

* ``<name>-<sha8>.pt``: the model's ``state_dict`` (``torch.save``), where ``<sha8>`` is the
  first 8 hex digits of the file's SHA-256. Format ``ensemble-v1``: an `EcgEnsemble` state
  dict (``members.<i>.*``, and ``stenosis.<i>.*`` after site fine-tuning); the foundation's
  format ``resnet1d-v0`` (a bare `ResNet1d` state dict) still loads, as a one-member ensemble;
* ``<name>-<sha8>.json``: its `WeightsMeta` (model version, label set, preprocessing,
  architecture, members, calibration, operating points, stenosis validation, training data,
  recipe, seed, metrics with CIs, full SHA-256).

Loading checks the file's SHA-256 against both the name and the meta and raises `ModelError`
on any mismatch, so a swapped or corrupted file can never be served under a known version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from inference.calibration import Calibrator
from inference.ensemble import (
    ArchConf,
    EcgEnsemble,
    arch_conf_from_json,
    arch_conf_from_tagged,
    arch_conf_to_json,
    arch_name,
)
from inference.errors import ModelError
from inference.preprocess import PreprocessConf

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
_NAME_RE = re.compile(r"^(?P<name>.+)-(?P<sha8>[0-9a-f]{8})\.pt$")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class WeightsMeta:
    """Everything needed to rebuild, run and judge a model, stored beside its weights."""

    model_version: str
    sha256: str
    tasks: tuple[str, ...]
    task_vessel: dict[str, str]
    thresholds: dict[str, float]
    preprocess: PreprocessConf
    architecture: ArchConf
    seed: int
    training_data: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    operating_points: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    #: ``resnet1d-v0`` (foundation: bare ResNet1d state dict) or ``ensemble-v1``.
    format: str = "resnet1d-v0"
    n_members: int = 1
    #: Task -> calibration map (identity for tasks not listed).
    calibration: dict[str, Calibrator] = field(default_factory=dict)
    #: None: no stenosis head in the file. Else the site fine-tune's record: "validated"
    #: (bool), "thresholds" (vessel -> probability), "metrics", "site", "n".
    stenosis: dict[str, Any] | None = None
    #: How per-prediction uncertainty is computed, e.g. {"method": "ensemble-sd", ...}.
    uncertainty: dict[str, Any] = field(default_factory=dict)
    #: A mixed ensemble's architecture per member (empty: all members use `architecture`).
    member_architectures: tuple[ArchConf, ...] = ()

    @property
    def member_confs(self) -> tuple[ArchConf, ...]:
        return self.member_architectures or (self.architecture,) * self.n_members

    @property
    def arch(self) -> str:
        names = {arch_name(c) for c in self.member_confs}
        return names.pop() if len(names) == 1 else "ensemble"

    def calibrator(self, task: str) -> Calibrator:
        return self.calibration.get(task, Calibrator("none"))

    @property
    def stenosis_validated(self) -> bool:
        return bool(self.stenosis and self.stenosis.get("validated"))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "arch": arch_name(self.architecture),
            "n_members": self.n_members,
            "calibration": {t: c.to_json() for t, c in self.calibration.items()},
            "stenosis": self.stenosis,
            "uncertainty": self.uncertainty,
            "member_architectures": [arch_conf_to_json(c) for c in self.member_architectures],
            "model_version": self.model_version,
            "sha256": self.sha256,
            "tasks": list(self.tasks),
            "task_vessel": self.task_vessel,
            "thresholds": self.thresholds,
            "operating_points": self.operating_points,
            "preprocess": self.preprocess.to_json(),
            "architecture": self.architecture.to_json(),
            "seed": self.seed,
            "training_data": self.training_data,
            "recipe": self.recipe,
            "metrics": self.metrics,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WeightsMeta:
        try:
            return cls(
                model_version=str(data["model_version"]),
                sha256=str(data["sha256"]),
                tasks=tuple(data["tasks"]),
                task_vessel=dict(data["task_vessel"]),
                thresholds={k: float(v) for k, v in data["thresholds"].items()},
                preprocess=PreprocessConf.from_json(data["preprocess"]),
                architecture=arch_conf_from_json(
                    str(data.get("arch", "resnet1d")), data["architecture"]
                ),
                seed=int(data["seed"]),
                training_data=dict(data.get("training_data", {})),
                recipe=dict(data.get("recipe", {})),
                operating_points=dict(data.get("operating_points", {})),
                metrics=dict(data.get("metrics", {})),
                created=str(data.get("created", "")),
                format=str(data.get("format", "resnet1d-v0")),
                n_members=int(data.get("n_members", 1)),
                calibration={
                    t: Calibrator.from_json(c) for t, c in data.get("calibration", {}).items()
                },
                stenosis=None if data.get("stenosis") is None else dict(data["stenosis"]),
                uncertainty=dict(data.get("uncertainty", {})),
                member_architectures=tuple(
                    arch_conf_from_tagged(c) for c in data.get("member_architectures", [])
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"weights meta is malformed: {exc}") from exc


@dataclass(frozen=True)
class Weights:
    """A pinned weights file; its meta is read (and checked) on first use."""

    path: Path

    @property
    def url(self) -> str:
        return self.path.resolve().as_uri()

    @property
    def meta_path(self) -> Path:
        return self.path.with_suffix(".json")

    @property
    def name(self) -> str:
        return self._parts()[0]

    @property
    def sha256_prefix(self) -> str:
        return self._parts()[1]

    def _parts(self) -> tuple[str, str]:
        match = _NAME_RE.match(self.path.name)
        if match is None:
            raise ModelError(f"weights file name {self.path.name!r} is not <name>-<sha8>.pt")
        return match["name"], match["sha8"]

    @cached_property
    def meta(self) -> WeightsMeta:
        try:
            data = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read weights meta {self.meta_path.name}: {exc}") from exc
        return WeightsMeta.from_json(data)

    @property
    def transforms(self) -> PreprocessConf:
        """The preprocessing the model was trained with."""
        return self.meta.preprocess

    def verify(self) -> str:
        """Check the file's SHA-256 against its name and meta; return the full digest."""
        if not self.path.is_file():
            raise ModelError(f"weights file {self.path} not found")
        digest = sha256_file(self.path)
        if not digest.startswith(self.sha256_prefix):
            raise ModelError(
                f"weights {self.path.name}: sha256 {digest[:8]} does not match its name"
            )
        if digest != self.meta.sha256:
            raise ModelError(f"weights {self.path.name}: sha256 does not match its meta")
        return digest

    def load_model(self, device: str | torch.device = "cpu") -> EcgEnsemble:
        """Verify the hash, build the architecture from the meta and load the state dict."""
        self.verify()
        meta = self.meta
        if meta.format not in ("resnet1d-v0", "ensemble-v1"):
            raise ModelError(f"weights {self.path.name}: unknown format {meta.format!r}")
        model = EcgEnsemble(meta.member_confs, stenosis=meta.stenosis is not None)
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if meta.format == "resnet1d-v0":
                model.members[0].load_state_dict(state)
            else:
                model.load_state_dict(state)
        except (RuntimeError, OSError, ValueError) as exc:
            raise ModelError(f"cannot load weights {self.path.name}: {exc}") from exc
        model.to(device)
        model.eval()
        logger.info("loaded %s on %s", self.meta.model_version, device)
        return model


def weights_from_file(path: Path) -> Weights:
    """A `Weights` for a ``<name>-<sha8>.pt`` file (e.g. one that `train` just wrote)."""
    weights = Weights(Path(path))
    weights._parts()
    return weights


#: The model shipped with this package (trained by `inference.train`, see MODEL_CARD.md).
DEFAULT_WEIGHTS = Weights(WEIGHTS_DIR / "ecgbridge-globallocal-a308c4e3.pt")
