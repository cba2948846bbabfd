"""``triagegate train`` without the printing: check labels, split, fit, score the held-out part, save.

The CLI parses options into :class:`TrainOptions`, calls :func:`train` and prints the
:class:`TrainReport`; a script can do the same and get the same checks and the same file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from triagegate.errors import ConfigError
from triagegate.spec import load_spec
from triagegate.tuning import training
from triagegate.tuning.datasets import label_counts, load_labeled, split
from triagegate.tuning.evaluation import accuracy


@dataclass(frozen=True)
class TrainOptions:
    """What ``triagegate train`` was asked; see its ``--help`` for each option."""

    graph: Path
    data: Path
    output: Path
    text_col: str | None = None
    label_col: str | None = None
    split_fraction: float | None = None
    seed: int = 13


class TrainReport(BaseModel):
    """What a training run did, as ``train --json`` prints it."""

    output: str
    model: str
    categories: int
    labels: dict[str, int]
    train_rows: int
    test_rows: int
    split: dict[str, float] | None
    held_out_accuracy: float | None
    train_seconds: float
    total_seconds: float
    training_sha256: str


def train(options: TrainOptions) -> TrainReport:
    """Fit the graph's first-tier classifier (the kind it binds) on the data and save it.

    The data's labels must be exactly the taxonomy's categories, and with a split the
    training part must still hold every category. Raises :class:`ConfigError` when they
    differ and :class:`~triagegate.tuning.datasets.DatasetError` for unreadable data.
    """
    started = time.perf_counter()
    loaded = load_spec(options.graph)
    rows = load_labeled(options.data, text_col=options.text_col, label_col=options.label_col)
    categories = loaded.spec.taxonomy.category_names
    problem = training.label_mismatch(sorted({r.label for r in rows}), categories)
    if problem:
        raise ConfigError(
            f"{options.data}: labels differ from the graph's taxonomy ({problem}); "
            f"the taxonomy has: {', '.join(categories)}",
            file=str(options.graph),
            key="taxonomy.categories",
        )
    fraction = options.split_fraction
    train_rows, test_rows = split(rows, fraction, options.seed) if fraction else (rows, [])
    if test_rows:
        missing = training.label_mismatch(sorted({r.label for r in train_rows}), categories)
        if missing:
            raise ConfigError(
                f"{options.data}: after the split the training part lacks some categories ({missing})"
            )
    model = training.fit_for_graph(
        loaded.spec,
        [r.text for r in train_rows],
        [r.label for r in train_rows],
        source=Path(options.data).name,
    )
    held_out = None
    if test_rows:
        probabilities = model.predict_proba([r.text for r in test_rows])
        predicted = [model.labels[i] for i in probabilities.argmax(axis=1)]
        held_out = accuracy([(r.label, p, 0.0) for r, p in zip(test_rows, predicted, strict=True)])
    training.save(model, options.output)
    return TrainReport(
        output=str(options.output),
        model=model.name,
        categories=len(categories),
        labels=label_counts(train_rows),
        train_rows=len(train_rows),
        test_rows=len(test_rows),
        split={"fraction": fraction, "seed": options.seed} if fraction else None,
        held_out_accuracy=held_out,
        train_seconds=model.metadata.train_seconds,
        total_seconds=round(time.perf_counter() - started, 3),
        training_sha256=model.metadata.training_sha256,
    )
