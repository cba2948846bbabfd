"""``triagegate train``: fit the triage classifier on a labeled file and save it for a graph."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from triagegate.cli import app
from triagegate.cli.common import GraphArg, JsonOpt

DataArg = Annotated[Path, typer.Argument(help="Labeled data: CSV, TSV or JSONL.", show_default=False)]
TextColOpt = Annotated[
    str | None,
    typer.Option("--text-col", help="Column with the ticket text (default: text, then instruction)."),
]
LabelColOpt = Annotated[
    str | None,
    typer.Option(
        "--label-col", help="Column with the category (default: label, then category, then intent)."
    ),
]
SplitOpt = Annotated[
    float | None,
    typer.Option(
        "--split", min=0.0, max=0.99, help="Hold out this fraction (seeded shuffle) for testing, e.g. 0.2."
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the shuffle behind --split.")]
FitOnSplitOpt = Annotated[
    bool,
    typer.Option("--train", help="With --split: fit the graph's classifier on the training part first."),
]


@app.command()
def train(
    graph: GraphArg,
    data: DataArg,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the model (.skops).", show_default=False)
    ],
    text_col: TextColOpt = None,
    label_col: LabelColOpt = None,
    split_fraction: SplitOpt = None,
    seed: SeedOpt = 13,
    as_json: JsonOpt = False,
) -> None:
    """Train GRAPH's triage classifier on DATA and write it to --output.

    DATA's labels must be exactly GRAPH's taxonomy categories. Bind the result in the graph
    with ``options: {model_path: PATH}`` under a ``backend: classifier`` model.

    Example: triagegate train graphs/support.yaml tickets.csv -o models/support.skops --split 0.2
    """
    import json
    import time

    from rich.console import Console
    from rich.table import Table

    from triagegate.errors import ConfigError
    from triagegate.spec import load_spec
    from triagegate.tuning import training
    from triagegate.tuning.datasets import label_counts, load_labeled, split
    from triagegate.tuning.evaluation import accuracy

    started = time.perf_counter()
    loaded = load_spec(graph)
    rows = load_labeled(data, text_col=text_col, label_col=label_col)
    categories = loaded.spec.taxonomy.category_names
    problem = training.label_mismatch(sorted({r.label for r in rows}), categories)
    if problem:
        raise ConfigError(
            f"{data}: labels differ from the graph's taxonomy ({problem}); "
            f"the taxonomy has: {', '.join(categories)}",
            file=str(graph),
            key="taxonomy.categories",
        )
    train_rows, test_rows = split(rows, split_fraction, seed) if split_fraction else (rows, [])
    if test_rows:
        missing = training.label_mismatch(sorted({r.label for r in train_rows}), categories)
        if missing:
            raise ConfigError(f"{data}: after the split the training part lacks some categories ({missing})")
    model = training.fit_for_graph(
        loaded.spec, [r.text for r in train_rows], [r.label for r in train_rows], source=Path(data).name
    )
    held_out = None
    if test_rows:
        probs = model.predict_proba([r.text for r in test_rows])
        predicted = [model.labels[i] for i in probs.argmax(axis=1)]
        held_out = accuracy([(r.label, p, 0.0) for r, p in zip(test_rows, predicted, strict=True)])
    training.save(model, output)
    seconds = time.perf_counter() - started
    summary = {
        "output": str(output),
        "labels": label_counts(train_rows),
        "train_rows": len(train_rows),
        "test_rows": len(test_rows),
        "split": {"fraction": split_fraction, "seed": seed} if split_fraction else None,
        "held_out_accuracy": held_out,
        "train_seconds": model.metadata.train_seconds,
        "total_seconds": round(seconds, 3),
        "training_sha256": model.metadata.training_sha256,
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    console = Console()
    table = Table(title=f"{len(categories)} labels, {len(train_rows)} training rows")
    table.add_column("label")
    table.add_column("rows", justify="right")
    for label, count in label_counts(train_rows).items():
        table.add_row(label, str(count))
    console.print(table)
    if held_out is not None:
        console.print(
            f"held-out accuracy: {held_out:.4f} on {len(test_rows)} rows (split {split_fraction}, seed {seed})"
        )
    console.print(f"fitted in {model.metadata.train_seconds:.2f} s, {seconds:.2f} s in all")
    console.print(f"wrote {output}")
