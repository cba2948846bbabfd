"""No module of triagegate imports a private module of a dependency.

A module whose dotted path has a part starting with ``_`` (``langgraph.pregel._write``) is
not part of its package's API and may change in a patch release, while pyproject.toml
allows whole major versions. This scans every module under src/ with the AST, so an import
inside a function or under ``TYPE_CHECKING`` counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
OWN = "triagegate"


def _is_private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def private_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every import of a private module of another package in ``tree``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            # ``from pkg import _module`` imports a private module too; ``from pkg import _name``
            # of a private function is just as fragile, so both count.
        for name in names:
            if name.split(".")[0] != OWN and _is_private(name):
                found.append((node.lineno, name))
    return found


def test_the_scan_finds_private_imports_in_every_form() -> None:
    source = (
        "import langgraph.pregel._write\n"
        "from langgraph.pregel._write import ChannelWriteEntry\n"
        "from langgraph.pregel import _write\n"
        "def f():\n    from httpx._client import Client\n"
        "import langgraph.graph\nfrom triagegate.models._pool import x\nfrom . import _local\n"
        "from pydantic import __version__\n"
    )
    assert [line for line, _ in private_imports(ast.parse(source))] == [1, 2, 2, 3, 5, 5]


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_module_imports_only_public_modules_of_dependencies(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = [f"{path.relative_to(SRC)}:{line}: {name}" for line, name in private_imports(tree)]
    assert not bad, "imports of private modules of dependencies:\n" + "\n".join(bad)
