"""Failpoints for fault tests: named places where a test can make this process die or stall.

Off unless ``ECGBRIDGE_FAILPOINTS`` is set, e.g.
``ECGBRIDGE_FAILPOINTS="after_inbox_commit=kill,before_writeback=sleep:5"``. Actions:
``kill`` (SIGKILL this process: no cleanup, like a power cut) and ``sleep:SECONDS``
(hold the process there, so a test can kill it from outside at a known point). Only the
fault tests set it; a production deployment never does.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from functools import cache

log = logging.getLogger(__name__)

ENV = "ECGBRIDGE_FAILPOINTS"


@cache
def _table() -> dict[str, str]:
    spec = os.environ.get(ENV, "")
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, action = part.partition("=")
        out[name.strip()] = action.strip()
    return out


def hit(name: str) -> None:
    """Run the action configured for failpoint `name`, if any."""
    action = _table().get(name)
    if not action:
        return
    log.warning("failpoint %s: %s", name, action)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("sleep:"):
        time.sleep(float(action.removeprefix("sleep:")))
