"""Trained classifier files: a skops payload written atomically, whatever the classifier's kind.

skops (never pickle) stores the arrays and scikit-learn objects; the file appears under its
name only once complete, so a reader (another worker loading the cache) never sees half of it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def dump(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` to ``path`` with skops through a temporary file in the same folder."""
    import skops.io as sio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        sio.dump(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
