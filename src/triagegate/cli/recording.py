"""``--record`` and ``--replay``, shared by ``run``, ``eval``, ``batch`` and ``calibrate``.

Recording appends every model call to a JSONL file (:mod:`triagegate.models.recording`);
replaying answers every alias from such a file instead of its models
(:mod:`triagegate.models.replay`). ``TRIAGEGATE_RECORD`` and ``TRIAGEGATE_REPLAY`` stand in
for the options, so a script can switch a whole run to replay without changing commands;
the commands resolve them with :func:`~triagegate.models.recording.record_path` and
:func:`~triagegate.models.replay.replay_path`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from triagegate import environment

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
