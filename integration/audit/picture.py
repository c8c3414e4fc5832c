"""The rendered ECG of the review page: the stored inbox message drawn as the report's
12-lead picture (`mappers.ecg_picture.render_ecg`, standard paper, 25 mm/s, 10 mm/mV).

The inbox payload is decrypted and parsed (`integration.ingest.decode_item`) in memory
only; pictures are kept in a small in-process cache, since a render takes about 0.25 s and a
reviewer reloads the page.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from integration.audit.errors import AuditError
from integration.inbox import Inbox

log = logging.getLogger(__name__)

PNG = "image/png"
EcgImage = Callable[[str], tuple[bytes, str] | None]


def inbox_picture(inbox: Inbox, *, cache_size: int = 16, dpi: int = 100) -> EcgImage:
    """An `EcgImage` for the audit router: ``ecg_id`` (the inbox item id) -> PNG bytes,
    or None when there is no such item or its message cannot be drawn (logged by id)."""
    cache: OrderedDict[str, bytes] = OrderedDict()
    lock = threading.Lock()

    def image(ecg_id: str) -> tuple[bytes, str] | None:
        with lock:
            if ecg_id in cache:
                cache.move_to_end(ecg_id)
                return cache[ecg_id], PNG
        png = _render(inbox, ecg_id, dpi=dpi)
        if png is None:
            return None
        with lock:
            cache[ecg_id] = png
            while len(cache) > cache_size:
                cache.popitem(last=False)
        return png, PNG

    return image


def _render(inbox: Inbox, ecg_id: str, *, dpi: int) -> bytes | None:
    from integration.errors import InboxError
    from integration.ingest import decode_item
    from mappers.ecg_picture import render_ecg
    from mappers.errors import MappingError

    try:
        item = inbox.get(ecg_id)
    except (InboxError, AuditError) as exc:  # database down, or a key that cannot open it
        log.warning("ECG %s: inbox read failed (%s)", ecg_id, exc.__class__.__name__)
        return None
    if item is None:
        return None
    try:
        record = decode_item(item)
    except (MappingError, AuditError, ValueError) as exc:
        log.warning("ECG %s: stored message cannot be drawn (%s)", ecg_id, exc.__class__.__name__)
        return None
    title = f"ECG {ecg_id}: 25 mm/s, 10 mm/mV (as received)"
    return render_ecg(
        record.signals_mv, record.fs_hz, record.lead_names, formats=("png",), title=title, dpi=dpi
    )["png"]
