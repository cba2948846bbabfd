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
    from rich.console import Console
    from rich.table import Table

    from triagegate.tuning.train import TrainOptions, train

    report = train(
        TrainOptions(
            graph=Path(graph),
            data=data,
            output=output,
            text_col=text_col,
            label_col=label_col,
            split_fraction=split_fraction,
            seed=seed,
        )
    )
    if as_json:
        typer.echo(report.model_dump_json())
        return
    console = Console()
    table = Table(title=f"{report.categories} labels, {report.train_rows} training rows ({report.model})")
    table.add_column("label")
    table.add_column("rows", justify="right")
    for label, count in report.labels.items():
        table.add_row(label, str(count))
    console.print(table)
    if report.held_out_accuracy is not None:
        console.print(
            f"held-out accuracy: {report.held_out_accuracy:.4f} on {report.test_rows} rows "
            f"(split {split_fraction}, seed {seed})"
        )
    console.print(f"fitted in {report.train_seconds:.2f} s, {report.total_seconds:.2f} s in all")
    console.print(f"wrote {report.output}")
