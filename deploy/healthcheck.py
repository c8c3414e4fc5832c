"""Container health check for the ecgbridge images (stdlib, plus Celery for workers).

ECGBRIDGE_HEALTHCHECK=http (default): GET http://127.0.0.1:$ECGBRIDGE_HTTP_PORT/health -> 200.
ECGBRIDGE_HEALTHCHECK=worker: a Celery ping answered by this container's worker over the
configured broker. `ecgbridge worker --queues Q` names its node ``Q-%i@%h``, which is
``Q-0@<hostname>`` in the main process (the one that answers pings): triage-0, explain-0 or
all-0; ``celery@<hostname>`` is Celery's default name, kept for older images.
Exit 0 healthy, 1 unhealthy (Docker HEALTHCHECK convention).
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request


def check_http() -> bool:
    port = int(os.environ.get("ECGBRIDGE_HTTP_PORT", "8080"))
    url = f"http://127.0.0.1:{port}/health"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return bool(resp.status == 200)


#: The node names this container's worker may have (see the module docstring).
WORKER_NODE_PREFIXES = ("triage-0", "explain-0", "all-0", "celery")


def worker_nodenames(hostname: str) -> list[str]:
    """The Celery node names a worker in a container called `hostname` may answer as."""
    return [f"{prefix}@{hostname}" for prefix in WORKER_NODE_PREFIXES]


def check_worker() -> bool:
    from integration.celery_app import create_app

    mine = worker_nodenames(socket.gethostname())
    # One container runs one worker: the first reply is enough (limit=1 returns at once).
    replies = create_app().control.ping(destination=mine, timeout=5.0, limit=1)
    return any(name in reply for reply in replies for name in mine)


def main() -> int:
    mode = os.environ.get("ECGBRIDGE_HEALTHCHECK", "http")
    try:
        ok = check_worker() if mode == "worker" else check_http()
    except Exception as exc:
        print(f"unhealthy: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
