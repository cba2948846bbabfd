"""``--record`` and ``--replay``, shared by ``run``, ``eval``, ``batch`` and ``calibrate``.

Recording appends every model call to a JSONL file (:mod:`triagegate.models.recording`);
replaying answers every alias from such a file instead of its models
(:mod:`triagegate.models.replay`). ``TRIAGEGATE_RECORD`` and ``TRIAGEGATE_REPLAY`` stand in
for the options, so a script can switch a whole run to replay without changing commands.
"""

from __future__ import annotations

from triagegate import environment

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from triagegate.models.base import ModelBackend
    from triagegate.spec import LoadedSpec


RecordOpt = Annotated[
    Path | None,
    typer.Option(
        "--record",
        help="Append every model request and response to this JSONL file (API keys stripped), "
        f"to --replay later. Env: {environment.RECORD}.",
    ),
]
ReplayOpt = Annotated[
    Path | None,
    typer.Option(
        "--replay",
        help="Answer every model call from this recording instead of the models: offline and deterministic; "
        f"a request it lacks fails naming the request. Env: {environment.REPLAY}.",
    ),
]


def record_path(option: Path | None, environ: Mapping[str, str]) -> Path | None:
    value = option or environ.get(environment.RECORD)
    return Path(value) if value else None


def replay_path(option: Path | None, environ: Mapping[str, str]) -> Path | None:
    value = option or environ.get(environment.REPLAY)
    return Path(value) if value else None


def replayed(loaded: LoadedSpec, option: Path | None, environ: Mapping[str, str]) -> LoadedSpec:
    """``loaded`` with every alias rebound to the recording, when ``--replay`` (or the env) names one."""
    path = replay_path(option, environ)
    if path is None:
        return loaded
    from triagegate.models.replay import with_replay

    return with_replay(loaded, path)


def recorded(
    alias: str,
    backend: ModelBackend,
    option: Path | None,
    loaded: LoadedSpec,
    environ: Mapping[str, str],
) -> ModelBackend:
    """``backend`` wrapped to record its calls, when ``--record`` (or the env) names a file."""
    path = record_path(option, environ)
    if path is None:
        return backend
    from triagegate.models.recording import record_backends

    return record_backends({alias: backend}, path, bindings=loaded.spec.models, environ=environ)[alias]
