"""deploy/k8s: rendered (tests/deploy/render.py, and `kubectl kustomize` when installed) and
validated against the Kubernetes 1.33 schemas with kubernetes-validate (strict: unknown
fields fail). The KEDA ScaledObject is a CRD the schemas lack: its structure is checked here.
Which queues each worker Deployment consumes is read through the real CLI
(tests/deploy/worker_cli.py), and every queue must have an autoscaler."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, cast

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from celery import Celery

from integration.celery_app import EXPLAIN_QUEUE, QUEUE, broker_config, enqueue_explanation
from integration.settings import Settings
from tests.deploy.render import Manifest, render
from tests.deploy.worker_cli import consumed_queues

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33.0"
TARGETS = ["base", "overlays/gpu-keda", "overlays/gpu-hpa"]
CRD_KINDS = {"ScaledObject"}
#: Created by cert-manager / the hospital PKI, only referenced here.
TLS_SECRETS = {"ecgbridge-mllp-tls", "ecgbridge-http-tls"}
#: Worker Deployment -> the Celery queues it must consume. Triage alone on `ecgbridge` (the
#: ED alert never waits behind an explanation); the GPU takes explanations (deploy/README.md).
WORKER_QUEUES = {
    "ecgbridge-worker-triage": {QUEUE},
    "ecgbridge-worker-explain": {EXPLAIN_QUEUE},
    "ecgbridge-worker-gpu": {EXPLAIN_QUEUE},
}
#: Priorities the triage queue is sent at: STAT, ASAP, routine, backfill.
TRIAGE_PRIORITIES = {0, 2, 5, 9}


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
    assert worker["args"][0] == "worker"
    assert pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["terminationGracePeriodSeconds"] > 180  # the task hard time limit


def test_redis_never_evicts_and_persists() -> None:
    cm = _by(_objects("base"), "ConfigMap")["ecgbridge-redis"]
    conf = dict(line.split(None, 1) for line in cm["data"]["redis.conf"].splitlines() if line)
    assert conf["appendonly"] == "yes"
    assert conf["maxmemory-policy"] == "noeviction"


def _celery_priority_lists(queue: str) -> set[str]:
    """Every Redis list kombu may use for `queue` with our priority steps."""
    from kombu.transport.redis import Channel

    _, options = broker_config(Settings(broker_url="redis://x:6379/0"))
    steps = options["priority_steps"]
    return {queue if p == 0 else f"{queue}{Channel.sep}{p}" for p in steps}


def _list_name(queue: str, priority: int) -> str:
    return queue if priority == 0 else f"{queue}\x06\x16{priority}"


def _explain_priorities() -> set[int]:
    """The priorities `enqueue_explanation` sends the explanation task at."""
    sent: list[int] = []

    class App:
        def send_task(self, name: str, *, args: list[str], queue: str, priority: int) -> None:
            assert queue == EXPLAIN_QUEUE
            sent.append(priority)

    for priority in TRIAGE_PRIORITIES:  # an explanation keeps its ECG's priority
        enqueue_explanation(cast(Celery, App()), "item-1", priority=priority)
    return set(sent)


def _queue_lists() -> dict[str, set[str]]:
    """Queue -> the Redis lists its messages land in (the ones an autoscaler must count)."""
    return {
        QUEUE: {_list_name(QUEUE, p) for p in TRIAGE_PRIORITIES},
        EXPLAIN_QUEUE: {_list_name(EXPLAIN_QUEUE, p) for p in _explain_priorities()},
    }


def _workers(objs: list[Manifest]) -> dict[str, Manifest]:
    """The Deployments that run `ecgbridge worker`."""
    return {
        name: dep
        for name, dep in _by(objs, "Deployment").items()
        if _pod(dep)["containers"][0]["args"][0] == "worker"
    }


def _queues_of(dep: Manifest) -> set[str]:
    (container,) = _pod(dep)["containers"]
    return consumed_queues(list(container["args"]))


@pytest.mark.parametrize("target", TARGETS)
def test_workers_consume_the_right_queues(target: str) -> None:
    workers = _workers(_objects(target))
    assert {"ecgbridge-worker-triage", "ecgbridge-worker-explain"} <= set(workers)
    consumed = {name: _queues_of(dep) for name, dep in workers.items()}
    for name, queues in consumed.items():
        assert name in WORKER_QUEUES, f"{name}: a worker Deployment the tests do not know"
        assert queues == WORKER_QUEUES[name], name
    # Every queue is served, and nothing else shares the triage queue with explanations.
    assert set().union(*consumed.values()) == {QUEUE, EXPLAIN_QUEUE}
    for name, queues in consumed.items():
        assert not (QUEUE in queues and EXPLAIN_QUEUE in queues), name


def test_cpu_workers_disruption_budgets_and_network_policy() -> None:
    objs = _objects("base")
    workers = _workers(objs)
    assert set(workers) == {"ecgbridge-worker-triage", "ecgbridge-worker-explain"}
    pdbs = _by(objs, "PodDisruptionBudget")
    policies = _by(objs, "NetworkPolicy")
    assert policies["default-deny-ingress"]["spec"]["podSelector"] == {}
    (redis_rule,) = policies["ecgbridge-redis"]["spec"]["ingress"]
    redis_peers = [
        f["podSelector"]["matchLabels"] for f in redis_rule["from"] if "podSelector" in f
    ]
    selectors = []
    for name, dep in workers.items():
        selector = dep["spec"]["selector"]["matchLabels"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
        selectors.append(selector)
        assert pdbs[name]["spec"]["selector"]["matchLabels"] == selector, name
        # Reaches Redis (the broker) like every ecgbridge pod; takes no ingress itself.
        assert any(peer.items() <= labels.items() for peer in redis_peers), name
        pod = _pod(dep)
        assert pod["terminationGracePeriodSeconds"] > 180, name  # the task hard time limit
        (worker,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in worker["env"]}
        assert env["ECGBRIDGE_HEALTHCHECK"] == "worker", name
        assert "livenessProbe" in worker, name
        # One process, one torch thread: a whole core each, not throttled below it.
        assert env["OMP_NUM_THREADS"] == "1", name
        assert worker["resources"]["requests"]["cpu"] == "1", name
        assert worker["resources"]["limits"]["cpu"] == "1", name
    # Selectors of different worker Deployments never select each other's pods.
    for i, a in enumerate(selectors):
        for b in selectors[i + 1 :]:
            assert not (a.items() <= b.items() or b.items() <= a.items())


def test_keda_scaledobjects_structure() -> None:
    objs = _objects("overlays/gpu-keda")
    workers = _workers(objs)
    redis_service = _by(objs, "Service")["ecgbridge-redis"]
    port = redis_service["spec"]["ports"][0]["port"]
    scaled = _by(objs, "ScaledObject")
    # One ScaledObject per worker Deployment, named after it.
    assert set(scaled) == set(workers)
    queue_lists = _queue_lists()
    per_replica: dict[str, int] = {}
    for name, so in scaled.items():
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        spec = so["spec"]
        assert spec["scaleTargetRef"]["name"] == name
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
        lengths = set()
        for trig in spec["triggers"]:
            assert trig["type"] == "redis"
            meta = trig["metadata"]
            assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata are strings"
            assert meta["address"] == f"ecgbridge-redis.ecgbridge.svc.cluster.local:{port}"
            assert int(meta["listLength"]) > 0
            lists.add(meta["listName"])
            lengths.add(int(meta["listLength"]))
        # Counts exactly the lists of the queues its Deployment consumes.
        queues = _queues_of(workers[name])
        for queue in queues:
            assert queue_lists[queue] <= _celery_priority_lists(queue)
        assert lists == set().union(*(queue_lists[q] for q in queues)), name
        (per_replica[name],) = lengths
    # Explanations may lag, alerts may not: more waiting per explain replica than per triage.
    assert per_replica["ecgbridge-worker-explain"] > per_replica["ecgbridge-worker-triage"]


def test_every_queue_has_an_autoscaler() -> None:
    for target, kind in (
        ("overlays/gpu-keda", "ScaledObject"),
        ("overlays/gpu-hpa", "HorizontalPodAutoscaler"),
    ):
        objs = _objects(target)
        workers = _workers(objs)
        scaled = {o["spec"]["scaleTargetRef"]["name"] for o in _by(objs, kind).values()}
        assert set(workers) <= scaled, target
        covered = set().union(*(_queues_of(workers[name]) for name in scaled))
        assert covered == {QUEUE, EXPLAIN_QUEUE}, target


def test_hpa_alternative_targets_the_workers() -> None:
    objs = _objects("overlays/gpu-hpa")
    workers = _workers(objs)
    hpas = _by(objs, "HorizontalPodAutoscaler")
    assert set(hpas) == set(workers)
    per_replica: dict[str, float] = {}
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        (metric,) = hpa["spec"]["metrics"]
        assert metric["external"]["metric"]["name"] == "ecgbridge_queue_depth"
        labels = metric["external"]["metric"]["selector"]["matchLabels"]
        # The gauge of the queue this Deployment consumes, all priorities summed.
        assert {labels["queue"]} == _queues_of(workers[name]), name
        assert labels["priority"] == "all"
        per_replica[name] = float(metric["external"]["target"]["averageValue"])
    assert per_replica["ecgbridge-worker-explain"] > per_replica["ecgbridge-worker-triage"]
