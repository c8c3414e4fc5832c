"""deploy/healthcheck.py, worker mode: it must ping the Celery node name that
`ecgbridge worker --queues ...` really takes (a mismatch makes every worker container
unhealthy and gets it restarted by its liveness probe)."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from celery.utils.nodenames import default_nodename, host_format

from tests.deploy.worker_cli import celery_worker_argv, queue_choices

HEALTHCHECK = Path(__file__).resolve().parents[2] / "deploy" / "healthcheck.py"


@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ecgbridge_healthcheck", HEALTHCHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _node_name(queues: str, hostname: str) -> str:
    """The node name `ecgbridge worker --queues <queues>` starts Celery with, expanded as
    Celery expands it in the worker's main process (the one that answers pings)."""
    argv = celery_worker_argv(["worker", "--queues", queues])
    name = argv[argv.index("-n") + 1] if "-n" in argv else default_nodename(None)
    return str(host_format(default_nodename(name), host=hostname))


def test_pings_the_node_names_the_cli_gives_its_workers(healthcheck: ModuleType) -> None:
    choices = queue_choices()
    assert {"triage", "explain", "all"} <= set(choices)
    candidates = healthcheck.worker_nodenames("pod-7")
    for queues in choices:
        assert _node_name(queues, "pod-7") in candidates, queues


def test_check_worker_healthy_only_on_a_reply_from_this_container(
    healthcheck: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    import integration.celery_app

    me = socket.gethostname()
    sent: dict[str, Any] = {}
    replies: list[dict[str, Any]] = []

    class Control:
        def ping(self, destination: list[str], timeout: float, limit: int) -> list[Any]:
            sent.update(destination=destination, timeout=timeout, limit=limit)
            return replies

    class App:
        control = Control()

    monkeypatch.setattr(integration.celery_app, "create_app", lambda: App())
    assert healthcheck.check_worker() is False
    assert f"explain-0@{me}" in sent["destination"] and sent["limit"] == 1
    replies.append({"triage-0@another-pod": {"ok": "pong"}})
    assert healthcheck.check_worker() is False
    replies.append({f"explain-0@{me}": {"ok": "pong"}})
    assert healthcheck.check_worker() is True
