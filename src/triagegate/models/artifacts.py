"""Trained classifier files: a skops payload written atomically, whatever the classifier's kind.

skops (never pickle) stores the arrays and scikit-learn objects; the file appears under its
name only once complete, so a reader (another worker loading the cache) never sees half of it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel


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


class LinearModel(Protocol):
    """What both classifier kinds store: fitted features, one linear layer, and their metadata."""

    @property
    def metadata(self) -> BaseModel: ...
    @property
    def features(self) -> Any: ...
    @property
    def coef(self) -> Any: ...
    @property
    def intercept(self) -> Any: ...


def dump_linear(model: LinearModel, file_format: str, path: str | Path) -> Path:
    """Write a linear classifier's file: its format tag, metadata (JSON), features and weights."""
    return dump(
        {
            "format": file_format,
            "metadata": model.metadata.model_dump_json(),
            "features": model.features,
            "coef": model.coef,
            "intercept": model.intercept,
        },
        path,
    )
