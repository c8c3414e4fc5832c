"""Key files: written whole or not at all, never overwritten."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_new_file(path: Path, data: bytes) -> None:
    """Create `path` with `data`, mode 0600, atomically: another process sees either no
    file or the complete one. Raises FileExistsError if `path` exists (the caller then
    loads the existing key instead of replacing it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.link(tmp, path)  # atomic, and fails if the name is taken
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
