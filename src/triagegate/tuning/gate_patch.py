"""Writing fitted thresholds into a graph file, leaving the rest of its text alone.

Graph files are edited by people and carry comments, ordering and layout that a YAML
round trip would lose, so the patch edits the text: it finds ``gate``, ``gate.threshold``
and ``gate.category_thresholds`` through PyYAML's node positions and rewrites only the
lines (or, for the threshold, only the number) it must. Comments on those lines and
full-line comments inside the replaced ``category_thresholds`` block are kept.

The result must parse to the same graph except for those two keys
(:func:`triagegate.spec.parse_spec`, compared field by field); anything this cannot
guarantee (flow-style mappings spanning lines, anchors, tags, several documents) is
refused with :class:`GatePatchError`, which says what to paste by hand instead.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from triagegate.errors import ConfigError
from triagegate.spec import parse_spec

Edit = tuple[int, int, list[str]]
"""Replace lines ``[start, end)`` of the original text with new lines."""


class GatePatchError(ConfigError):
    """The graph file cannot be patched safely; the message includes the snippet to apply by hand."""


def _number(value: float) -> str:
    return repr(float(value))


def _key(name: str) -> str:
    try:
        plain = yaml.safe_load(f"{name}: 0") == {name: 0}
    except yaml.YAMLError:
        plain = False
    return name if plain else '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _entries(thresholds: Mapping[str, float], indent: str) -> list[str]:
    return [f"{indent}{_key(k)}: {_number(v)}\n" for k, v in sorted(thresholds.items())]


def snippet(threshold: float, category_thresholds: Mapping[str, float]) -> str:
    """The ``gate`` keys to set, as YAML to paste into a graph file."""
    lines = ["gate:\n", f"  threshold: {_number(threshold)}\n"]
    if category_thresholds:
        lines += ["  category_thresholds:\n", *_entries(category_thresholds, "    ")]
    else:
        lines.append("  category_thresholds: {}\n")
    return "".join(lines)


def _child(mapping: yaml.MappingNode, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    for k, v in mapping.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return k, v
    return None


def _last_line(node: yaml.Node) -> int:
    """0-based line of the last character of a block node."""
    end = node.end_mark
    return end.line if end.column > 0 else end.line - 1


def _empty(node: yaml.Node) -> bool:
    return (
        isinstance(node, yaml.ScalarNode)
        and node.tag.endswith(":null")
        and node.start_mark.index == node.end_mark.index
    )


def _edits(
    lines: list[str], root: yaml.MappingNode, threshold: float, thresholds: Mapping[str, float]
) -> list[Edit]:
    gate = _child(root, "gate")
    if gate is None:
        indent = " " * _indent_of(root)
        block = ["gate:\n", f"{indent}threshold: {_number(threshold)}\n"]
        if thresholds:
            block += [f"{indent}category_thresholds:\n", *_entries(thresholds, indent * 2)]
        tail = [] if not lines or lines[-1].endswith("\n") else ["\n"]
        return [(len(lines), len(lines), tail + block)]
    gate_key, gate_value = gate
    if _empty(gate_value):
        indent = " " * _indent_of(root)
        line = gate_key.start_mark.line
        block = [f"{indent}threshold: {_number(threshold)}\n"]
        if thresholds:
            block += [f"{indent}category_thresholds:\n", *_entries(thresholds, indent * 2)]
        return [(line + 1, line + 1, block)]
    if not isinstance(gate_value, yaml.MappingNode) or gate_value.flow_style:
        raise ValueError("'gate' is not a block mapping")
    first_key = gate_value.value[0][0] if gate_value.value else None
    if first_key is None:
        raise ValueError("'gate' is an empty mapping")
    column = first_key.start_mark.column
    indent = " " * column
    step = " " * max(2, column - gate_key.start_mark.column)
    edits: list[Edit] = []
    found = _child(gate_value, "threshold")
    if found is not None:
        _, value = found
        if not isinstance(value, yaml.ScalarNode) or value.start_mark.line != value.end_mark.line:
            raise ValueError("gate.threshold is not a plain number on one line")
        n = value.start_mark.line
        text = lines[n]
        lines_edit = text[: value.start_mark.column] + _number(threshold) + text[value.end_mark.column :]
        edits.append((n, n + 1, [lines_edit]))
        after = n + 1
    else:
        n = first_key.start_mark.line
        edits.append((n, n, [f"{indent}threshold: {_number(threshold)}\n"]))
        after = n
    found = _child(gate_value, "category_thresholds")
    if found is None:
        if thresholds:
            block = [f"{indent}category_thresholds:\n", *_entries(thresholds, indent + step)]
            if edits[-1][0] == after:
                edits[-1][2].extend(block)
            else:
                edits.append((after, after, block))
        return edits
    key, value = found
    start = key.start_mark.line
    if isinstance(value, yaml.MappingNode) and not value.flow_style and value.value:
        end = _last_line(value.value[-1][1]) + 1
        nested = value.value[0][0].start_mark.column
        keep = [ln for ln in lines[start + 1 : end] if ln.lstrip().startswith("#")]
        entries = _entries(thresholds, " " * nested)
    elif _empty(value) or (
        isinstance(value, yaml.MappingNode) and value.start_mark.line == value.end_mark.line == start
    ):
        end = start + 1
        keep = []
        entries = _entries(thresholds, indent + step)
    else:
        raise ValueError("gate.category_thresholds is neither a block mapping nor a one-line flow mapping")
    if not thresholds:
        return [*edits, (start, end, [])]
    head = lines[start]
    if isinstance(value, yaml.MappingNode) and value.flow_style:
        rest = head[value.end_mark.column :].rstrip("\n")
        head = (
            head[: value.start_mark.column].rstrip() + (rest if rest.strip().startswith("#") else "") + "\n"
        )
    return [*edits, (start, end, [head, *keep, *entries])]


def _indent_of(root: yaml.MappingNode) -> int:
    for _, value in root.value:
        if isinstance(value, yaml.MappingNode) and not value.flow_style and value.value:
            column: int = value.value[0][0].start_mark.column
            return max(2, column)
    return 2


def patch_text(
    text: str, threshold: float, category_thresholds: Mapping[str, float], *, source: str = "<graph>"
) -> str:
    """``text`` with ``gate.threshold`` and ``gate.category_thresholds`` set; raises :class:`GatePatchError`."""
    manual = f"set these keys by hand instead:\n{snippet(threshold, category_thresholds)}"
    try:
        documents = list(yaml.compose_all(text))
    except yaml.YAMLError as exc:
        raise GatePatchError(f"not valid YAML ({exc}); {manual}", file=source) from None
    if len(documents) != 1 or not isinstance(documents[0], yaml.MappingNode) or documents[0].flow_style:
        raise GatePatchError(f"the graph file is not one block-style YAML mapping; {manual}", file=source)
    lines = text.splitlines(keepends=True)
    try:
        edits = _edits(lines, documents[0], threshold, category_thresholds)
    except ValueError as exc:
        raise GatePatchError(f"cannot patch the file's text: {exc}; {manual}", file=source) from None
    for start, end, new in sorted(edits, key=lambda e: e[0], reverse=True):
        lines[start:end] = new
    return "".join(lines)


def _without_thresholds(spec: Any) -> dict[str, Any]:
    dumped: dict[str, Any] = spec.model_dump(mode="json")
    dumped["gate"].pop("threshold")
    dumped["gate"].pop("category_thresholds")
    return dumped


def patch_file(path: str | Path, threshold: float, category_thresholds: Mapping[str, float]) -> str:
    """Patch the graph file at ``path`` in place (atomically) and return its new text.

    Refuses, leaving the file untouched, when the patched text does not parse to the same
    graph with exactly the new thresholds.
    """
    path = Path(path)
    source = str(path)
    text = path.read_text(encoding="utf-8")
    new = patch_text(text, threshold, category_thresholds, source=source)
    manual = f"set these keys by hand instead:\n{snippet(threshold, category_thresholds)}"
    before = parse_spec(text, source=source, base_dir=path.parent, environ={}).spec
    try:
        after = parse_spec(new, source=source, base_dir=path.parent, environ={}).spec
    except ConfigError as exc:
        raise GatePatchError(
            f"the patched file would not validate ({exc.reason}); {manual}", file=source
        ) from None
    if (
        after.gate.threshold != threshold
        or after.gate.category_thresholds != dict(category_thresholds)
        or _without_thresholds(after) != _without_thresholds(before)
    ):
        raise GatePatchError(f"the patched file would change more than the thresholds; {manual}", file=source)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(new)
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return new
