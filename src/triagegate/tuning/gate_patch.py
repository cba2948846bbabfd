"""Writing fitted thresholds into a graph file, leaving the rest of its text alone.

Graph files are edited by people and carry comments, ordering, quoting, anchors and flow
style. The patch is a ruamel.yaml round trip: the file is loaded as a comment-preserving
tree, a tier's ``threshold`` and ``category_thresholds`` are set in place (keys kept in
their order, new ones appended sorted, comments on kept keys kept) and the tree is written
back with the file's own indentation. The tier is named (``tier=``), or the first one by
default: its gate is ``tiers[i].gate``, or the top-level ``gate`` in a file of the legacy
``nodes:``/``gate:`` form (whose only gated tier is the first). :func:`patch_tiers_file`
patches several tiers at once (``calibrate --cascade --write``), checked and written once.

Two checks guard the result, and a failed one leaves the file untouched and raises
:class:`GatePatchError` with the snippet to paste by hand instead:

* every line outside the gate block must come back byte for byte (a round trip that
  would re-indent or re-quote the rest of a file is refused rather than written);
* the result must parse (:func:`triagegate.spec.parse_spec`, the graph loader itself) to
  the same graph except for the two keys, compared field by field.
"""

from __future__ import annotations

import difflib
import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedBase, CommentedMap
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString
from ruamel.yaml.util import load_yaml_guess_indent

from triagegate.errors import ConfigError
from triagegate.spec import GraphSpec, parse_spec


class GatePatchError(ConfigError):
    """The graph file cannot be patched safely; the message includes the snippet to apply by hand."""


def _key(name: str) -> str:
    """``name`` as a mapping key the graph loader (YAML 1.1) reads back as the same string."""
    try:
        plain = yaml.safe_load(f"{name}: 0") == {name: 0}
    except yaml.YAMLError:
        plain = False
    return name if plain else DoubleQuotedScalarString(name)


def snippet(
    threshold: float, category_thresholds: Mapping[str, float], *, tier: str | None = None, index: int = 0
) -> str:
    """The ``gate`` keys to set, as YAML to paste into a graph file.

    ``tier`` names the tier (at ``index`` in a file written as tiers), so the snippet says
    where it goes (``tiers[0].gate``); without it, the snippet is the legacy top-level ``gate``.
    """
    gate: dict[str, Any] = {"threshold": float(threshold)}
    gate["category_thresholds"] = CommentedMap(
        (_key(k), float(v)) for k, v in sorted(category_thresholds.items())
    )
    if not category_thresholds:
        gate["category_thresholds"].fa.set_flow_style()
    text = _dump({"gate": gate}, mapping=2, sequence=4, offset=2)
    if tier is None:
        return text
    which = "the first tier" if index == 0 else "tier"
    return f"# the gate of {which} (tiers[{index}], {tier}):\n{text}"


def _dump(data: Any, *, mapping: int, sequence: int, offset: int) -> str:
    out = io.StringIO()
    _yaml(mapping, sequence, offset).dump(data, out)
    return out.getvalue()


def _yaml(mapping: int = 2, sequence: int = 4, offset: int = 2) -> YAML:
    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    rt.width = 1 << 20
    rt.indent(mapping=mapping, sequence=sequence, offset=offset)
    return rt


def _keep_anchors(node: Any) -> None:
    """Mark every anchor to be written even when nothing refers to it (ruamel drops unused ones)."""
    if isinstance(node, CommentedBase) and node.anchor.value:
        node.yaml_set_anchor(node.anchor.value, always_dump=True)
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        _keep_anchors(child)


def _mapping_indent(root: CommentedMap) -> int:
    for key in root:
        value = root[key]
        if isinstance(value, CommentedMap) and value and not value.fa.flow_style():
            return max(1, int(value.lc.col) - int(root.lc.key(key)[1]))
    return 2


def _tier_index(root: CommentedMap, tier: str | None) -> int | None:
    """The index of the tier named ``tier`` (the first when ``None``) in a file written as
    ``tiers``; ``None`` in the legacy form, where only the first tier has a gate."""
    tiers = root.get("tiers")
    if tiers is None:
        if tier not in (None, "mini"):
            raise ValueError(f"a file of the legacy form gates only its first tier (mini), not {tier!r}")
        return None
    if not isinstance(tiers, list) or not tiers or not all(isinstance(t, CommentedMap) for t in tiers):
        raise ValueError("'tiers' is not a list of tier mappings")
    index = 0 if tier is None else next((i for i, t in enumerate(tiers) if t.get("name") == tier), None)
    if index is None:
        raise ValueError(f"no tier is named {tier!r}")
    if tiers[index].fa.flow_style():
        raise ValueError(f"tier {tiers[index].get('name')!r} is written in flow style")
    return index


def _gate_holder(root: CommentedMap, tier: str | None) -> tuple[CommentedMap, int | None]:
    """The mapping that holds the tier's ``gate``, and the line where what follows it starts.

    For ``tiers[i]`` that is the next tier, or the next top-level key after ``tiers``
    (``None``: the end of the file); for the legacy form, the root mapping itself.
    """
    index = _tier_index(root, tier)
    if index is None:
        return root, None
    tiers = root["tiers"]
    if len(tiers) > index + 1:
        return tiers[index], int(tiers.lc.item(index + 1)[0])
    keys = list(root)
    later = [int(root.lc.key(k)[0]) for k in keys[keys.index("tiers") + 1 :]]
    return tiers[index], min(later) if later else None


def _label(root: CommentedMap, tier: str | None) -> str:
    index = _tier_index(root, tier)
    return "gate" if index is None else f"tiers[{index}].gate"


def _set_thresholds(
    root: CommentedMap, threshold: float, thresholds: Mapping[str, float], tier: str | None
) -> None:
    holder, _ = _gate_holder(root, tier)
    gate = holder.get("gate")
    if gate is None:
        gate = holder["gate"] = CommentedMap()
    if not isinstance(gate, CommentedMap):
        raise ValueError("'gate' is not a mapping")
    gate["threshold"] = float(threshold)
    current = gate.get("category_thresholds")
    if not thresholds:
        if "category_thresholds" in gate:
            del gate["category_thresholds"]
        return
    if not isinstance(current, CommentedMap):
        current = gate["category_thresholds"] = CommentedMap()
    wanted = {str(k): float(v) for k, v in thresholds.items()}
    for name in [k for k in current if str(k) not in wanted]:
        del current[name]
    for name in sorted(wanted):
        key = next((k for k in current if str(k) == name), None)
        current[key if key is not None else _key(name)] = wanted[name]


def _editable(root: CommentedMap, lines: int, tier: str | None) -> tuple[range, set[int]]:
    """The original lines the tier's ``gate`` block spans, and those of them the patch may rewrite.

    Lines may be inserted anywhere in the block; rewritten or removed only where they hold
    ``threshold`` or ``category_thresholds`` (or the whole block, for a flow-style or empty
    gate, which ruamel writes on one line).
    """
    holder, after = _gate_holder(root, tier)
    keys = list(holder)
    if "gate" not in keys:
        return range(lines, lines), set()
    start = int(holder.lc.key("gate")[0])
    later = [int(holder.lc.key(k)[0]) for k in keys[keys.index("gate") + 1 :]]
    if after is not None:
        later.append(after)
    block = range(start, min(later) if later else lines)
    gate = holder["gate"]
    if not isinstance(gate, CommentedMap) or gate.fa.flow_style() or not gate:
        return block, set(block)
    rows = [int(gate.lc.key(k)[0]) for k in gate] + [block.stop]
    editable: set[int] = set()
    for i, key in enumerate(gate):
        if key in ("threshold", "category_thresholds"):
            editable.update(range(rows[i], max(rows[i] + 1, rows[i + 1])))
    return block, editable


def _manual(text: str, threshold: float, category_thresholds: Mapping[str, float], tier: str | None) -> str:
    index, name = _tier_name(text, tier)
    return (
        f"set these keys by hand instead:\n{snippet(threshold, category_thresholds, tier=name, index=index)}"
    )


def patch_text(
    text: str,
    threshold: float,
    category_thresholds: Mapping[str, float],
    *,
    source: str = "<graph>",
    tier: str | None = None,
) -> str:
    """``text`` with a tier's ``threshold`` and ``category_thresholds`` set; raises :class:`GatePatchError`.

    ``tier`` names the tier (default: the first). Setting no category thresholds removes
    the key (the gate then uses the global one).
    """
    manual = _manual(text, threshold, category_thresholds, tier)
    try:
        _, sequence, offset = load_yaml_guess_indent(text)
        probe = _yaml().load(text)
        if not isinstance(probe, CommentedMap) or probe.fa.flow_style():
            raise GatePatchError(f"the graph file is not one block-style YAML mapping; {manual}", file=source)
        mapping = _mapping_indent(probe)
        rt = _yaml(mapping, sequence or mapping + 2, offset or 0)
        root = rt.load(text)
        block, editable = _editable(root, len(text.splitlines()), tier)
        _keep_anchors(root)
        _set_thresholds(root, threshold, category_thresholds, tier)
        out = io.StringIO()
        rt.dump(root, out)
    except YAMLError as exc:
        raise GatePatchError(f"not valid YAML ({exc}); {manual}", file=source) from None
    except ValueError as exc:
        raise GatePatchError(f"cannot patch the file: {exc}; {manual}", file=source) from None
    new = out.getvalue()
    old_lines = (text if text.endswith("\n") else text + "\n").splitlines(keepends=True)
    new_lines = new.splitlines(keepends=True)
    for tag, i1, i2, _, _ in difflib.SequenceMatcher(a=old_lines, b=new_lines, autojunk=False).get_opcodes():
        if tag == "equal" or (tag == "insert" and block.start <= i1 <= max(block.stop, block.start + 1)):
            continue
        kept = next((i for i in range(i1, i2) if i not in editable), None)
        if kept is not None:
            label = _label(root, tier)
            where = f"outside '{label}'" if kept not in block else f"in '{label}' besides the thresholds"
            raise GatePatchError(
                f"writing the file back would change line {kept + 1}, {where}; {manual}", file=source
            )
    return new


def _tier_name(text: str, tier: str | None = None) -> tuple[int, str | None]:
    """The tier's index and name when ``text`` is written as tiers (for the snippet), else ``(0, None)``."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        return 0, tier
    tiers = raw.get("tiers") if isinstance(raw, dict) else None
    if not isinstance(tiers, list) or not tiers:
        return 0, tier
    for i, item in enumerate(tiers):
        name = item.get("name") if isinstance(item, dict) else None
        if (tier is None and i == 0) or (tier is not None and name == tier):
            return i, str(name or f"tiers[{i}]")
    return 0, tier


def _without_thresholds(spec: GraphSpec, tiers: Sequence[str]) -> dict[str, Any]:
    dumped: dict[str, Any] = spec.model_dump(mode="json")
    for tier in dumped["tiers"]:
        if tier["name"] in tiers:
            tier["gate"].pop("threshold")
            tier["gate"].pop("category_thresholds")
    return dumped


def patch_file(
    path: str | Path, threshold: float, category_thresholds: Mapping[str, float], *, tier: str | None = None
) -> str:
    """Patch one tier's gate (default: the first tier's) in the graph file at ``path``, in
    place (atomically), and return its new text; see :func:`patch_tiers_file`."""
    return patch_tiers_file(path, {tier: (threshold, category_thresholds)})


def patch_tiers_file(path: str | Path, gates: Mapping[str | None, tuple[float, Mapping[str, float]]]) -> str:
    """Set ``{tier: (threshold, category_thresholds)}`` (``None``: the first tier) in the graph
    file at ``path``, in place (atomically), and return its new text.

    Refuses, leaving the file untouched, when the patched text does not parse to the same
    graph with exactly the new thresholds.
    """
    path = Path(path)
    source = str(path)
    text = path.read_text(encoding="utf-8")
    new = text
    for tier, (threshold, thresholds) in gates.items():
        new = patch_text(new, threshold, thresholds, source=source, tier=tier)
    manual = "set these keys by hand instead:\n" + "".join(
        snippet(t, c, tier=name, index=index)
        for (index, name), (t, c) in ((_tier_name(text, tier), gate) for tier, gate in gates.items())
    )
    before = parse_spec(text, source=source, base_dir=path.parent, environ={}).spec
    try:
        after = parse_spec(new, source=source, base_dir=path.parent, environ={}).spec
    except ConfigError as exc:
        raise GatePatchError(
            f"the patched file would not validate ({exc.reason}); {manual}", file=source
        ) from None
    names = [after.first_tier.name if tier is None else tier for tier in gates]
    for name, (threshold, thresholds) in zip(names, gates.values(), strict=True):
        gate = after.gate_of(name)
        if gate.threshold != threshold or gate.category_thresholds != dict(thresholds):
            raise GatePatchError(f"the patched file would not hold the new thresholds; {manual}", file=source)
    if _without_thresholds(after, names) != _without_thresholds(before, names):
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
