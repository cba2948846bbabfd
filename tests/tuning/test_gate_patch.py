"""``calibrate --write``: the gate patched through a ruamel.yaml round trip, everything else left as written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from triagegate.spec import load_spec
from triagegate.tuning.gate_patch import GatePatchError, patch_file, patch_text, snippet

REPO = Path(__file__).resolve().parents[2]


def changed(before: str, after: str) -> list[tuple[str, str]]:
    """Pairs of differing lines (the texts must have the same number of lines)."""
    a, b = before.splitlines(), after.splitlines()
    assert len(a) == len(b), (a, b)
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y]


def test_comments_and_four_space_indentation_are_kept() -> None:
    text = (
        "# graph: tuned by hand\n"
        "models:\n"
        "    mini: {backend: scripted}    # a flow mapping\n"
        "gate:\n"
        "    # the global cut-off\n"
        "    threshold: 0.70   # keep an eye on it\n"
        "    category_thresholds:\n"
        "        # refunds are risky\n"
        "        refund: 0.9    # from March\n"
        "        billing: 0.85\n"
        "taxonomy:\n"
        "    categories:\n"
        "        -   name: billing\n"
        "        -   name: refund   # money back\n"
    )
    after = patch_text(text, 0.8, {"refund": 0.95, "billing": 0.85})
    assert changed(text, after) == [
        ("    threshold: 0.70   # keep an eye on it", "    threshold: 0.8    # keep an eye on it"),
        ("        refund: 0.9    # from March", "        refund: 0.95   # from March"),
    ]


def test_flow_style_gate_stays_flow_style() -> None:
    text = "version: 1\ngate: {threshold: 0.5, category_thresholds: {billing: 0.9}}   # flow\nname: g\n"
    after = patch_text(text, 0.75, {"billing": 0.8, "refund": 0.6})
    assert after.splitlines()[1].startswith(
        "gate: {threshold: 0.75, category_thresholds: {billing: 0.8, refund: 0.6}}"
    )
    assert after.splitlines()[1].endswith("# flow")
    assert [after.splitlines()[0], after.splitlines()[2]] == ["version: 1", "name: g"]
    assert yaml.safe_load(after)["gate"] == {
        "threshold": 0.75,
        "category_thresholds": {"billing": 0.8, "refund": 0.6},
    }


def test_anchors_and_aliases_are_kept() -> None:
    text = (
        "prices: &cheap {input: 1.0, output: 2.0}\n"
        "models:\n"
        "  mini: {backend: scripted, price: *cheap}\n"
        "  flagship:\n"
        "    backend: scripted\n"
        "    price: *cheap\n"
        "gate:\n"
        "  threshold: 0.5\n"
        "  always_escalate: &rules\n"
        "    categories: [security]\n"
        "  never_escalate: {categories: []}\n"
    )
    after = patch_text(text, 0.6, {})
    assert changed(text, after) == [("  threshold: 0.5", "  threshold: 0.6")]
    assert "&rules" in after and after.count("*cheap") == 2  # kept, though nothing refers to it


def test_a_round_trip_that_would_reformat_a_line_is_refused() -> None:
    """ruamel normalises some spacing; the patch refuses rather than rewrite those lines."""
    for text, where in (
        ("models:\n  mini:   {backend: scripted}\ngate:\n  threshold: 0.5\n", "line 2, outside 'gate'"),
        (
            "gate:\n  threshold: 0.5\n  never_escalate: &n   # why\n    categories: []\n",
            "line 3, in 'gate' besides",
        ),
    ):
        with pytest.raises(GatePatchError, match=where):
            patch_text(text, 0.7, {})


def test_block_entries_are_updated_in_place_removed_and_added_sorted() -> None:
    text = "gate:\n  threshold: 0.5\n  category_thresholds:\n    zeta: 0.9  # z\n    alpha: 0.8\n  never_escalate: {}\n"
    after = patch_text(text, 0.5, {"zeta": 0.7, "mid": 0.6})
    assert after == (
        "gate:\n  threshold: 0.5\n  category_thresholds:\n    zeta: 0.7  # z\n    mid: 0.6\n  never_escalate: {}\n"
    )
    cleared = patch_text(text, 0.5, {})
    assert cleared == "gate:\n  threshold: 0.5\n  never_escalate: {}\n"


def test_a_missing_or_empty_gate_is_written_with_the_file_indentation() -> None:
    assert patch_text("version: 1\nname: g\n", 0.7, {"billing": 0.9}) == (
        "version: 1\nname: g\ngate:\n  threshold: 0.7\n  category_thresholds:\n    billing: 0.9\n"
    )
    four = "models:\n    mini: {backend: scripted}\ngate:\nname: g\n"
    assert (
        patch_text(four, 0.7, {})
        == "models:\n    mini: {backend: scripted}\ngate:\n    threshold: 0.7\nname: g\n"
    )
    assert patch_text("name: g", 0.7, {}) == "name: g\ngate:\n  threshold: 0.7\n"


def test_a_category_named_like_a_yaml_11_boolean_is_quoted() -> None:
    after = patch_text("gate:\n  threshold: 0.5\n", 0.5, {"no": 0.9, "on call": 0.8})
    assert '"no": 0.9' in after and "on call: 0.8" in after
    assert yaml.safe_load(after)["gate"]["category_thresholds"] == {"no": 0.9, "on call": 0.8}
    assert '"no": 0.9' in snippet(0.5, {"no": 0.9})


def test_what_cannot_be_kept_is_refused_with_the_snippet() -> None:
    for text, problem in (
        ("gate: [1, 2]\n", "'gate' is not a mapping"),
        ("- a\n- b\n", "not one block-style YAML mapping"),
        ("{gate: {threshold: 0.5}}\n", "not one block-style YAML mapping"),
        ("a: 1\n---\nb: 2\n", "not valid YAML"),
        ("models:\n  mini:\n     backend: x\ngate:\n  threshold: 0.5\n", "outside 'gate'"),
    ):
        with pytest.raises(GatePatchError, match=problem) as caught:
            patch_text(text, 0.7, {"billing": 0.9})
        assert "set these keys by hand instead:\ngate:\n  threshold: 0.7\n" in str(caught.value)


def test_the_reference_graph_changes_only_in_its_first_tiers_gate(tmp_path: Path) -> None:
    graph = tmp_path / "graphs" / "support.yaml"
    graph.parent.mkdir()
    shutil.copy(REPO / "graphs" / "support.yaml", graph)
    (tmp_path / "prompts").symlink_to(REPO / "prompts")
    (tmp_path / "kb").symlink_to(REPO / "kb")
    text = graph.read_text(encoding="utf-8")
    categories = load_spec(graph).spec.taxonomy.category_names
    patched = patch_file(graph, 0.61, {categories[0]: 0.9})
    assert graph.read_text(encoding="utf-8") == patched
    gate = load_spec(graph).spec.gate_of("mini")
    assert gate.threshold == 0.61 and gate.category_thresholds == {categories[0]: 0.9}
    lines = text.splitlines()
    start = lines.index("    gate:")
    end = next(i for i, line in enumerate(lines) if i > start and line.startswith("  - name:"))
    old, new = lines, patched.splitlines()
    grown = len(new) - len(old)
    assert new[:start] == old[:start] and new[end + grown :] == old[end:]
    assert grown == 2 and "      category_thresholds:" in new[start : end + grown]


TIERS = """\
models:
  mini: {backend: scripted}
  small: {backend: scripted}
  big: {backend: scripted}
tiers:
  - name: first    # cheapest
    model: mini
    prompt: triage.md
    gate:
      threshold: 0.5   # tuned by hand
      never_escalate: {categories: []}
  - name: second
    model: small
    prompt: triage.md
    gate:
      threshold: 0.4
  - name: last
    model: big
    prompt: escalate.md
"""


def test_a_tiers_file_gets_its_first_tiers_gate_patched_and_no_other() -> None:
    after = patch_text(TIERS, 0.7, {"billing": 0.9})
    assert after == TIERS.replace(
        "      threshold: 0.5   # tuned by hand\n      never_escalate: {categories: []}\n",
        "      threshold: 0.7   # tuned by hand\n      never_escalate: {categories: []}\n"
        "      category_thresholds:\n        billing: 0.9\n",
    )
    assert yaml.safe_load(after)["tiers"][1]["gate"] == {"threshold": 0.4}


def test_a_tiers_file_refuses_with_a_snippet_naming_the_first_tier() -> None:
    text = TIERS.replace("  mini: {backend: scripted}", "  mini:   {backend: scripted}")
    with pytest.raises(GatePatchError, match=r"line 2, outside 'tiers\[0\]\.gate'") as caught:
        patch_text(text, 0.7, {})
    assert "# the gate of the first tier (tiers[0], first):\ngate:\n  threshold: 0.7\n" in str(caught.value)


THREE_TIERS = """\
tiers:
  - name: classifier
    model: clf
    gate:
      threshold: 0.9   # the first tier
  - name: small
    model: small
    gate:
      # tuned by hand
      threshold: 0.8
      category_thresholds: {billing: 0.95}
  - name: flagship
    model: flagship
taxonomy:
  categories:
    - name: billing
"""


def test_a_tier_is_patched_by_name_and_the_others_are_left_alone() -> None:
    after = patch_text(THREE_TIERS, 0.65, {}, tier="small")
    lines = after.splitlines()
    assert "      threshold: 0.9   # the first tier" in lines and "      threshold: 0.65" in lines
    assert "      # tuned by hand" in lines and "category_thresholds" not in after
    assert yaml.safe_load(after)["tiers"][1]["gate"] == {"threshold": 0.65}
    with pytest.raises(GatePatchError, match="no tier is named 'medium'"):
        patch_text(THREE_TIERS, 0.5, {}, tier="medium")
    assert snippet(0.65, {}, tier="small", index=1).startswith("# the gate of tier (tiers[1], small):\n")


def test_every_tier_patched_at_once_writes_the_file_once(tmp_path: Path) -> None:
    from triagegate.tuning.gate_patch import patch_tiers_file

    graph = tmp_path / "graphs" / "cascade.yaml"
    graph.parent.mkdir()
    (tmp_path / "prompts").symlink_to(REPO / "prompts")
    shutil.copy(REPO / "graphs" / "cascade.yaml", graph)
    before = graph.read_text(encoding="utf-8")
    patch_tiers_file(graph, {"classifier": (0.42, {}), "small": (0.7, {"billing": 0.9})})
    spec = load_spec(graph, environ={}).spec
    assert spec.gate_of("classifier").threshold == 0.42
    assert (spec.gate_of("small").threshold, spec.gate_of("small").category_thresholds) == (
        0.7,
        {"billing": 0.9},
    )
    after = graph.read_text(encoding="utf-8")
    assert [line for line in before.splitlines() if line not in after.splitlines()] == [
        "      threshold: 0.9",
        "      threshold: 0.8",
    ]
