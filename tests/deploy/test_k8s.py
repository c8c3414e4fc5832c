"""deploy/k8s: rendered (tests/deploy/render.py, and `kubectl kustomize` when installed) and
validated against the Kubernetes 1.33 schemas with kubernetes-validate (strict: unknown
fields fail). The KEDA ScaledObject is a CRD the schemas lack: its structure is checked here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from integration.celery_app import QUEUE, broker_config
from integration.settings import Settings
from tests.deploy.render import Manifest, render

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33.0"
TARGETS = ["base", "overlays/gpu-keda", "overlays/gpu-hpa"]
CRD_KINDS = {"ScaledObject"}
#: Created by cert-manager / the hospital PKI, only referenced here.
TLS_SECRETS = {"ecgbridge-mllp-tls", "ecgbridge-http-tls"}


def _objects(target: str) -> list[Manifest]:
    return render(K8S / target)


def _by(objs: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


@pytest.mark.parametrize("target", TARGETS)
def test_schema_valid(target: str) -> None:
    objs = _objects(target)
    assert objs
    for obj in objs:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "ecgbridge"


@pytest.mark.parametrize("target", TARGETS)
def test_kubectl_kustomize_renders_the_same(target: str) -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed; rendered with tests/deploy/render.py only")
    proc = subprocess.run(
        ["kubectl", "kustomize", str(K8S / target)], capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr.decode()
    theirs = {(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(proc.stdout) if o}
    ours = {(o["kind"], o["metadata"]["name"]) for o in _objects(target)}
    assert theirs == ours


def _pod(dep: Manifest) -> dict[str, Any]:
    spec = dep["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def test_listener_probes_tls_and_disruption_budget() -> None:
    objs = _objects("base")
    dep = _by(objs, "Deployment")["ecgbridge-listener"]
    assert dep["spec"]["replicas"] >= 2
    containers = {c["name"]: c for c in _pod(dep)["containers"]}
    app = containers["ecgbridge"]
    assert app["args"] == ["serve"]
    assert app["readinessProbe"]["httpGet"]["path"] == "/health"
    assert app["startupProbe"]["httpGet"]["path"] == "/health"
    assert "livenessProbe" in app
    mllp = containers["mllp-tls"]
    assert mllp["readinessProbe"]["tcpSocket"]["port"] == "mllp-tls"
    assert "--target=127.0.0.1:2575" in mllp["args"]
    volumes = {v["name"]: v for v in _pod(dep)["volumes"]}
    assert volumes["mllp-tls"]["secret"]["secretName"] == "ecgbridge-mllp-tls"
    ingress = _by(objs, "Ingress")["ecgbridge-http"]
    assert ingress["spec"]["tls"][0]["secretName"] == "ecgbridge-http-tls"
    pdb = _by(objs, "PodDisruptionBudget")["ecgbridge-listener"]
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    policies = _by(objs, "NetworkPolicy")
    assert policies["default-deny-ingress"]["spec"]["podSelector"] == {}
    assert "ecgbridge-listener" in policies


def test_every_pod_runs_non_root_with_secrets_that_exist() -> None:
    objs = _objects("overlays/gpu-keda")
    secrets = set(_by(objs, "Secret"))
    assert {"ecgbridge-database", "ecgbridge-keys"} <= secrets
    for kind in ("Deployment", "StatefulSet"):
        for name, obj in _by(objs, kind).items():
            pod = _pod(obj)
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            for c in pod["containers"]:
                assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
                assert "memory" in c["resources"]["limits"], name
                for src in c.get("envFrom", []):
                    if "secretRef" in src:
                        assert src["secretRef"]["name"] in secrets, name
            for vol in pod.get("volumes", []):
                if "secret" in vol:
                    assert vol["secret"]["secretName"] in secrets | TLS_SECRETS, name


def test_gpu_worker_requests_a_gpu_on_gpu_nodes() -> None:
    dep = _by(_objects("overlays/gpu-keda"), "Deployment")["ecgbridge-worker-gpu"]
    pod = _pod(dep)
    (worker,) = pod["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["args"] == ["worker"]
    assert pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["terminationGracePeriodSeconds"] > 180  # the task hard time limit


def test_redis_never_evicts_and_persists() -> None:
    cm = _by(_objects("base"), "ConfigMap")["ecgbridge-redis"]
    conf = dict(line.split(None, 1) for line in cm["data"]["redis.conf"].splitlines() if line)
    assert conf["appendonly"] == "yes"
    assert conf["maxmemory-policy"] == "noeviction"


def _celery_priority_lists() -> set[str]:
    """The Redis lists kombu uses for queue `ecgbridge` with our priority steps."""
    from kombu.transport.redis import Channel

    _, options = broker_config(Settings(broker_url="redis://x:6379/0"))
    steps = options["priority_steps"]
    return {QUEUE if p == 0 else f"{QUEUE}{Channel.sep}{p}" for p in steps}


def test_keda_scaledobjects_structure() -> None:
    objs = _objects("overlays/gpu-keda")
    deployments = _by(objs, "Deployment")
    redis_service = _by(objs, "Service")["ecgbridge-redis"]
    port = redis_service["spec"]["ports"][0]["port"]
    scaled = _by(objs, "ScaledObject")
    assert set(scaled) == {"ecgbridge-worker-cpu", "ecgbridge-worker-gpu"}
    used_priorities = {"0", "2", "5", "9"}  # STAT, ASAP, routine, backfill
    for name, so in scaled.items():
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        spec = so["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments, name
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert set(spec) <= {
            "scaleTargetRef",
            "pollingInterval",
            "cooldownPeriod",
            "minReplicaCount",
            "maxReplicaCount",
            "advanced",
            "triggers",
            "idleReplicaCount",
            "fallback",
        }
        lists = set()
        for trig in spec["triggers"]:
            assert trig["type"] == "redis"
            meta = trig["metadata"]
            assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata are strings"
            assert meta["address"] == f"ecgbridge-redis.ecgbridge.svc.cluster.local:{port}"
            assert int(meta["listLength"]) > 0
            lists.add(meta["listName"])
        assert lists <= _celery_priority_lists()
        expected = {QUEUE if p == "0" else f"{QUEUE}\x06\x16{p}" for p in used_priorities}
        assert lists == expected


def test_hpa_alternative_targets_the_workers() -> None:
    objs = _objects("overlays/gpu-hpa")
    deployments = _by(objs, "Deployment")
    hpas = _by(objs, "HorizontalPodAutoscaler")
    assert set(hpas) == {"ecgbridge-worker-cpu", "ecgbridge-worker-gpu"}
    for hpa in hpas.values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        (metric,) = hpa["spec"]["metrics"]
        assert metric["external"]["metric"]["name"] == "ecgbridge_queue_depth"
