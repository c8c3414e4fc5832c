"""A small kustomize subset, enough for deploy/k8s: `resources` (files and directories with a
kustomization.yaml) and `namespace`. Tests render with it so they need no kubectl; when
kubectl is installed, a test checks that `kubectl kustomize` renders the same objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: Kinds without a namespace (the ones deploy/k8s uses).
CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding"})

Manifest = dict[str, Any]


def load_documents(path: Path) -> list[Manifest]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for d in docs:
        if not isinstance(d, dict):
            raise ValueError(f"{path}: a document is not a mapping")
    return docs


def render(directory: Path) -> list[Manifest]:
    """The objects the kustomization in `directory` renders."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    out: list[Manifest] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        out.extend(render(target) if target.is_dir() else load_documents(target))
    namespace = spec.get("namespace")
    if namespace:
        for obj in out:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = namespace
    return out
