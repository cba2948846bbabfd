"""``triagegate graph show|check``: look at and validate graph files without running models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from triagegate.cli import graph_app
from triagegate.cli.common import GraphArg

if TYPE_CHECKING:
    from triagegate.spec import LoadedSpec


def _check(graph: str) -> tuple[LoadedSpec, list[str]]:
    from triagegate.models import backend_class
    from triagegate.prompts import load_graph_templates
    from triagegate.spec import load_spec

    loaded = load_spec(graph)
    load_graph_templates(loaded)
    lines = []
    for alias, binding in loaded.spec.models.items():
        backend_class(binding.backend)
        where = f" @ {binding.base_url}" if binding.base_url else ""
        lines.append(f"{alias}: {binding.backend} {binding.model}{where}")
    return loaded, lines


@graph_app.command("check")
def check(graph: GraphArg) -> None:
    """Validate GRAPH and its prompt templates; exit 2 with file, line and key on the first problem."""
    loaded, lines = _check(str(graph))
    spec = loaded.spec
    typer.echo(
        f"ok: {graph} ({spec.name}): {len(spec.taxonomy.categories)} categories, threshold {spec.gate.threshold}"
    )
    for line in lines:
        typer.echo(f"  {line}")


@graph_app.command("show")
def show(
    graph: GraphArg,
    fmt: Annotated[str, typer.Option("--format", help="mermaid (default) or json.")] = "mermaid",
) -> None:
    """Print GRAPH's flow as Mermaid text (or the validated spec as JSON)."""
    from triagegate.graph import mermaid

    spec = _check(str(graph))[0].spec
    if fmt == "json":
        typer.echo(spec.model_dump_json(indent=2))
        return
    if fmt != "mermaid":
        raise typer.BadParameter("use 'mermaid' or 'json'", param_hint="--format")
    typer.echo(mermaid(spec))
