"""Atomic file writes: readers see the old content or the new, never a part.

The content goes to `<name>.tmp` beside the file, then rename(2) replaces the
file in one step (POSIX guarantees a rename within one file system is
atomic). Used for the stack's state files and the demo's reports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Replace `path` with `data` (text is written as UTF-8) in one rename;
    creates the parent directory. Returns `path`.

    Raises:
        OSError: the directory or the file could not be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.replace(path)
    return path


def write_json_atomic(path: Path, doc: Any, **dumps: Any) -> Path:
    """`write_atomic` of `json.dumps(doc, **dumps)`. Returns `path`.

    Raises:
        OSError: as `write_atomic`.
        TypeError: `doc` holds a value JSON cannot encode (and no `default=`).
    """
    return write_atomic(path, json.dumps(doc, **dumps))
