"""Container health check for the ecgbridge images (stdlib, plus Celery for workers).

ECGBRIDGE_HEALTHCHECK=http (default): GET http://127.0.0.1:$ECGBRIDGE_HTTP_PORT/health -> 200.
ECGBRIDGE_HEALTHCHECK=worker: a Celery ping answered by this container's worker
(celery@<hostname>) over the configured broker.
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


def check_worker() -> bool:
    from integration.celery_app import create_app

    me = f"celery@{socket.gethostname()}"
    replies = create_app().control.ping(destination=[me], timeout=5.0)
    return any(me in reply for reply in replies)


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
