"""Batch processing of ticket files: streaming, resumable, rate-limited, with progress and a report.

:class:`BatchRunner` runs an input (JSONL, CSV or TSV, a file or standard input, read by
:mod:`triagegate.inputs`) through a :class:`~triagegate.pipeline.Pipeline` into an output
of one Outcome JSON line per input row, recording progress in a SQLite ledger so an
interrupted batch resumes where it stopped without losing or repeating a row. :func:`dry_run` validates and prices an input
without calling any model. The ``triagegate batch`` command is a thin layer over both.
"""

from __future__ import annotations

from triagegate.batch.dryrun import dry_run, render_dry_run
from triagegate.batch.report import render_summary
from triagegate.batch.runner import BatchOptions, BatchResult, BatchRunner, default_ledger_path

__all__ = [
    "BatchOptions",
    "BatchResult",
    "BatchRunner",
    "default_ledger_path",
    "dry_run",
    "render_dry_run",
    "render_summary",
]
