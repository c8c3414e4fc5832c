"""What `ecgbridge worker [--queues ...]` hands to Celery, read from the real CLI (its
`worker_main` call intercepted, nothing started), so the deploy tests follow the code."""

from __future__ import annotations

import pytest
from celery import Celery

from integration.cli import _parser
from integration.settings import Settings


def celery_worker_argv(args: list[str]) -> list[str]:
    """The `celery worker` argv for the container args `args` (e.g. ["worker", "--queues",
    "triage"]). Raises SystemExit when the CLI would refuse them."""
    import integration.tasks
    from integration.cli import _worker

    parsed = _parser().parse_args(args)
    assert parsed.command == "worker", args
    argv: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(integration.tasks, "register", lambda app, settings: None)
        mp.setattr(Celery, "worker_main", lambda self, a: argv.extend(a))
        assert _worker(Settings(broker_url="redis://x:6379/0"), parsed.queues) == 0
    return argv


def consumed_queues(args: list[str]) -> set[str]:
    """The Celery queues a worker started with container args `args` consumes."""
    argv = celery_worker_argv(args)
    return set(argv[argv.index("-Q") + 1].split(","))


def queue_choices() -> list[str]:
    """The values `ecgbridge worker --queues` accepts."""
    (sub,) = (a for a in _parser()._actions if a.dest == "command")
    choices = getattr(sub, "choices", None)
    assert choices is not None
    (queues,) = (a for a in choices["worker"]._actions if a.dest == "queues")
    assert queues.choices is not None
    return [str(c) for c in queues.choices]
