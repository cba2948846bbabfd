"""Loading graph files: validation errors that point at file, line and key; environment overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from triagegate.errors import ConfigError
from triagegate.spec import LoadedSpec, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
SUPPORT = REPO / "graphs" / "support.yaml"
SCRIPTED = REPO / "tests" / "graphs" / "scripted.yaml"
BASE = SCRIPTED.read_text(encoding="utf-8")


def line_of(text: str, needle: str) -> int:
    """1-based number of the only line of ``text`` containing ``needle``."""
    hits = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(hits) == 1, f"{needle!r} found on lines {hits}"
    return hits[0]


def edited(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def config_error(text: str, **kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_spec(text, source="graphs/broken.yaml", environ={}, **kwargs)  # type: ignore[arg-type]
    return info.value


def test_support_graph_loads_without_building_backends() -> None:
    loaded = load_spec(SUPPORT, environ={})
    spec = loaded.spec
    assert spec.name == "support"
    assert spec.models["mini"].backend == "classifier"
    assert spec.tier_names == ["mini", "flagship"]
    assert spec.last_tier.model == "flagship"
    assert "security" in spec.taxonomy.category_names
    assert spec.gate_of("mini").threshold == 0.6
    assert loaded.path == SUPPORT.resolve()
    assert loaded.prompts_dir == (REPO / "prompts").resolve()


def test_parse_spec_resolves_prompts_relative_to_base_dir(tmp_path: Path) -> None:
    loaded = parse_spec(BASE, base_dir=tmp_path / "graphs", environ={})
    assert loaded.prompts_dir == (tmp_path / "graphs" / "../../prompts").resolve()
    assert loaded.path is None


def test_missing_graph_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_spec(missing, environ={})
    assert info.value.file == str(missing)
    assert str(missing) in str(info.value)


def test_load_spec_errors_name_the_file_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    text = edited("threshold: 0.7", "treshold: 0.7")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_spec(path, environ={})
    assert str(info.value).startswith(f"{path}:{line_of(text, 'treshold')} [gate.treshold]")


def test_unknown_key_names_file_line_and_key() -> None:
    text = edited("threshold: 0.7", "treshold: 0.7")
    err = config_error(text)
    assert (err.file, err.line, err.key) == ("graphs/broken.yaml", line_of(text, "treshold"), "gate.treshold")
    assert "unknown key" in err.reason
    assert str(err).startswith(f"graphs/broken.yaml:{err.line} [gate.treshold]: ")


def test_missing_required_key_points_at_the_parent() -> None:
    text = edited("  escalate: {model: flagship, prompt: escalate.md}\n", "")
    err = config_error(text)
    assert err.key == "nodes.escalate"
    # The line of the 'nodes' block, where the key belongs.
    assert line_of(text, "nodes:") <= err.line <= line_of(text, "answer: {model")
    assert "required key is missing" in err.reason


def test_wrong_type_names_the_key_and_its_line() -> None:
    text = edited("prompt: answer.md}", "prompt: answer.md, max_tokens: lots}")
    err = config_error(text)
    assert err.key == "nodes.answer.max_tokens"
    assert err.line == line_of(text, "max_tokens: lots")
    assert "integer" in err.reason


def test_threshold_out_of_range() -> None:
    text = edited("threshold: 0.7", "threshold: 1.5")
    err = config_error(text)
    assert (err.key, err.line) == ("gate.threshold", line_of(text, "threshold: 1.5"))
    assert "1" in err.reason


def test_category_threshold_out_of_range() -> None:
    text = edited("  threshold: 0.7\n", "  threshold: 0.7\n  category_thresholds: {billing: 2}\n")
    err = config_error(text)
    assert err.key == "gate.category_thresholds"
    assert err.line == line_of(text, "category_thresholds")
    assert "'billing'" in err.reason


def test_invalid_yaml_reports_the_line() -> None:
    text = edited("  threshold: 0.7\n", "  threshold: 0.7: 0.8\n")
    err = config_error(text)
    assert err.file == "graphs/broken.yaml"
    assert err.line == line_of(text, "threshold: 0.7: 0.8")
    assert "not valid YAML" in err.reason


def test_non_mapping_document_is_rejected() -> None:
    err = config_error("- just\n- a list\n")
    assert err.file == "graphs/broken.yaml"
    assert "mapping" in err.reason


def test_authorization_header_is_rejected() -> None:
    text = edited(
        "    model: mini-model\n", "    model: mini-model\n    headers: {Authorization: Bearer abc}\n"
    )
    err = config_error(text)
    assert err.key == "models.mini.headers"
    assert err.line == line_of(text, "headers:")
    assert "api_key_env" in err.reason
    assert "Bearer abc" not in str(err)


@pytest.mark.parametrize("header", ["api-key", "X-API-Key"])
def test_other_secret_headers_are_rejected(header: str) -> None:
    text = edited("    model: mini-model\n", f"    model: mini-model\n    headers: {{{header}: x}}\n")
    assert config_error(text).key == "models.mini.headers"


def test_harmless_headers_are_accepted() -> None:
    text = edited("    model: mini-model\n", "    model: mini-model\n    headers: {X-Team: support}\n")
    assert parse_spec(text, environ={}).spec.models["mini"].headers == {"X-Team": "support"}


# Cross-reference errors: the file, and a message naming the dotted path and the bad name.


def test_unknown_alias_in_nodes_is_named() -> None:
    err = config_error(edited("escalate: {model: flagship", "escalate: {model: flagshp"))
    assert err.file == "graphs/broken.yaml"
    assert "nodes.escalate.model" in err.reason
    assert "'flagshp'" in err.reason


def test_unknown_fallback_alias_is_named() -> None:
    err = config_error(edited("    model: mini-model\n", "    model: mini-model\n    fallbacks: [nope]\n"))
    assert err.file == "graphs/broken.yaml"
    assert "models.mini.fallbacks" in err.reason
    assert "'nope'" in err.reason


def test_self_fallback_is_rejected() -> None:
    err = config_error(edited("    model: mini-model\n", "    model: mini-model\n    fallbacks: [mini]\n"))
    assert "itself" in err.reason


@pytest.mark.parametrize("alias", ["record", "replay", "log-level"])
def test_alias_clashing_with_a_reserved_variable_is_rejected(alias: str) -> None:
    text = BASE.replace("  flagship:\n", f"  {alias}:\n", 1).replace("{model: flagship", "{model: " + alias)
    err = config_error(text)
    assert f"model alias {alias!r} is reserved" in err.reason
    assert "rename the alias" in err.reason


def test_unknown_category_in_gate_is_named() -> None:
    err = config_error(edited("categories: [security]", "categories: [securty]"))
    assert err.file == "graphs/broken.yaml"
    assert "gate.always_escalate.categories" in err.reason
    assert "securty" in err.reason


def test_unknown_priority_in_gate_is_named() -> None:
    err = config_error(
        edited("    categories: [security]\n", "    categories: [security]\n    priorities: [asap]\n")
    )
    assert "asap" in err.reason


@pytest.mark.parametrize(
    ("old", "new", "key", "needle"),
    [
        ("escalate: {model: flagship", "escalate: {model: flagshp", "nodes.escalate.model", "flagshp"),
        (
            "    model: mini-model\n",
            "    model: mini-model\n    fallbacks: [nope]\n",
            "models.mini.fallbacks",
            "fallbacks: [nope]",
        ),
        (
            "categories: [security]",
            "categories: [securty]",
            "gate.always_escalate.categories",
            "securty",
        ),
    ],
)
def test_cross_reference_errors_name_line_and_key(old: str, new: str, key: str, needle: str) -> None:
    text = edited(old, new)
    err = config_error(text)
    assert err.key is not None
    assert err.key.startswith(key)
    assert err.line == line_of(text, needle)


# Environment overrides.


def test_env_override_short_form() -> None:
    loaded = parse_spec(BASE, environ={"TRIAGEGATE_MINI": "openai:gpt@http://x/v1"})
    mini = loaded.spec.models["mini"]
    assert (mini.backend, mini.model, mini.base_url) == ("openai", "gpt", "http://x/v1")
    # Backend-neutral settings survive a change of backend.
    assert (mini.price.input, mini.price.output) == (1.0, 2.0)
    # Other aliases are untouched.
    assert loaded.spec.models["flagship"].backend == "scripted"


def test_env_override_backend_only_and_model_without_url() -> None:
    loaded = parse_spec(BASE, environ={"TRIAGEGATE_MINI": "scripted:other", "TRIAGEGATE_FLAGSHIP": "openai"})
    assert loaded.spec.models["mini"].model == "other"
    assert loaded.spec.models["mini"].base_url is None
    flagship = loaded.spec.models["flagship"]
    assert flagship.backend == "openai"
    assert flagship.model == ""
    assert flagship.capabilities.vision is True


def test_env_override_json_is_merged_over_the_binding() -> None:
    loaded = parse_spec(BASE, environ={"TRIAGEGATE_MINI": '{"model": "m2", "timeout": 5}'})
    mini = loaded.spec.models["mini"]
    assert (mini.backend, mini.model, mini.timeout) == ("scripted", "m2", 5.0)
    assert mini.price.output == 2.0


def test_env_override_single_fields() -> None:
    loaded = parse_spec(
        BASE,
        environ={
            "TRIAGEGATE_MINI_BASE_URL": "http://127.0.0.1:9/v1",
            "TRIAGEGATE_MINI_MODEL": "tiny",
            "TRIAGEGATE_MINI_API_KEY_ENV": "MY_KEY",
        },
    )
    mini = loaded.spec.models["mini"]
    assert (mini.base_url, mini.model, mini.api_key_env) == ("http://127.0.0.1:9/v1", "tiny", "MY_KEY")


def test_env_override_capabilities_set_the_full_set() -> None:
    loaded = parse_spec(
        BASE, environ={"TRIAGEGATE_MINI_CAPABILITIES": "logprobs", "TRIAGEGATE_FLAGSHIP_CAPABILITIES": ""}
    )
    mini, flagship = loaded.spec.models["mini"], loaded.spec.models["flagship"]
    assert (mini.capabilities.logprobs, mini.capabilities.vision) == (True, False)
    assert (flagship.capabilities.logprobs, flagship.capabilities.vision) == (False, False)


def test_env_override_alias_with_dash() -> None:
    text = BASE.replace("  flagship:\n", "  big-one:\n").replace("model: flagship,", "model: big-one,")
    loaded = parse_spec(text, environ={"TRIAGEGATE_BIG_ONE_MODEL": "huge"})
    assert loaded.spec.models["big-one"].model == "huge"


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"TRIAGEGATE_MINI": ":no-backend"}, "models.mini"),
        ({"TRIAGEGATE_MINI": "{not json"}, "models.mini"),
        ({"TRIAGEGATE_MINI_CAPABILITIES": "vision,telepathy"}, "models.mini.capabilities"),
    ],
)
def test_bad_env_override_is_a_config_error(environ: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_spec(BASE, environ=environ)
    assert info.value.key == key
    assert next(iter(environ)) in str(info.value)


def test_invalid_env_override_value_mentions_the_override() -> None:
    with pytest.raises(ConfigError) as info:
        parse_spec(BASE, source="g.yaml", environ={"TRIAGEGATE_MINI": '{"timeout": -1}'})
    assert info.value.key == "models.mini.timeout"
    assert "TRIAGEGATE_MINI" in str(info.value)


# content_hash


def _loaded(text: str = BASE, **environ: str) -> LoadedSpec:
    return parse_spec(text, environ=environ)


def test_content_hash_is_stable() -> None:
    assert _loaded().content_hash() == _loaded().content_hash()
    assert _loaded().content_hash({"triage": "x"}) == _loaded().content_hash({"triage": "x"})
    assert len(_loaded().content_hash()) == 16


def test_content_hash_ignores_comments_and_formatting() -> None:
    reformatted = "# a comment\n" + BASE.replace("threshold: 0.7", "threshold:   0.70   # tuned")
    assert _loaded(reformatted).content_hash() == _loaded().content_hash()


def test_content_hash_changes_with_content() -> None:
    base = _loaded().content_hash()
    assert _loaded(edited("threshold: 0.7", "threshold: 0.71")).content_hash() != base
    assert _loaded().content_hash({"triage": "prompt v2"}) != _loaded().content_hash({"triage": "prompt v1"})
    assert _loaded(TRIAGEGATE_MINI_MODEL="other").content_hash() != base


YAML11_WORDS = ["no", "yes", "on", "off", "true", "False", "NO"]


@pytest.mark.parametrize("word", YAML11_WORDS)
def test_a_yaml11_boolean_category_name_gets_a_hint_to_quote_it(word: str) -> None:
    text = edited("{name: feedback,", f"{{name: {word},")
    error = config_error(text)
    assert (error.file, error.line, error.key) == (
        "graphs/broken.yaml",
        line_of(text, f"name: {word},"),
        "taxonomy.categories[3].name",
    )
    boolean = "true" if word.lower() in ("yes", "on", "true") else "false"
    assert f"YAML 1.1 reads the unquoted {word} as the boolean {boolean}" in error.reason
    assert f'write it in quotes ("{word}")' in error.reason
    assert "Input should be a valid string" not in error.reason


@pytest.mark.parametrize(
    ("old", "new", "key", "needle"),
    [
        (
            "categories: [feedback]",
            "categories: [feedback, off]",
            "gate.never_escalate.categories[1]",
            "[feedback, off]",
        ),
        (
            "threshold: 0.7\n",
            "threshold: 0.7\n  category_thresholds:\n    billing: 0.9\n    no: 0.8\n",
            "gate.category_thresholds.no",
            "no: 0.8",
        ),
        (
            "taxonomy:\n",
            "taxonomy:\n  priorities: [low, normal, yes]\n",
            "taxonomy.priorities[2]",
            "[low, normal, yes]",
        ),
        (
            "categories: [security]",
            "categories: [security]\n    priorities: [on]",
            "gate.always_escalate.priorities[0]",
            "priorities: [on]",
        ),
        ("models:\n", "models:\n  off: {backend: scripted}\n", "models.off", "off: {backend"),
        (
            "description: deliveries}",
            "description: deliveries, examples: [Where is my parcel, yes]}",
            "taxonomy.categories[1].examples[1]",
            "examples: [Where is my parcel, yes]",
        ),
        (
            "description: deliveries}",
            "description: deliveries, priority: no}",
            "taxonomy.categories[1].priority",
            "priority: no}",
        ),
    ],
)
def test_yaml11_booleans_elsewhere_get_the_same_hint(old: str, new: str, key: str, needle: str) -> None:
    text = edited(old, new)
    error = config_error(text)
    assert (error.line, error.key) == (line_of(text, needle), key)
    assert "YAML 1.1 reads the unquoted" in error.reason and "write it in quotes" in error.reason


def test_quoted_yaml11_words_are_names() -> None:
    text = edited("{name: feedback,", '{name: "no",').replace("categories: [feedback]", 'categories: ["no"]')
    spec = parse_spec(text, environ={}).spec
    assert "no" in spec.taxonomy.category_names
    assert spec.gate_of("mini").never_escalate.categories == ["no"]


def test_numbers_and_empty_values_where_text_is_expected_are_explained() -> None:
    number = config_error(edited("{name: feedback,", "{name: 404,"))
    assert number.key == "taxonomy.categories[3].name"
    assert 'reads the unquoted 404 as a number; write it in quotes ("404")' in number.reason
    empty = config_error(edited("{name: feedback,", "{name: ,"))
    assert "the value is empty" in empty.reason


def test_a_choice_gets_the_hint_only_when_the_quoted_word_is_a_choice() -> None:
    error = config_error(edited("threshold: 0.7", "threshold: 0.7\n  on_missing_logprobs: no"))
    assert error.key == "gate.on_missing_logprobs"
    assert "'escalate' or 'verbalized'" in error.reason
    assert "quotes" not in error.reason


def test_a_boolean_alias_does_not_break_environment_overrides() -> None:
    error = config_error(edited("models:\n", "models:\n  no: {backend: scripted}\n"))
    assert error.key == "models.no"


def test_on_missing_logprobs_defaults_to_escalate() -> None:
    assert parse_spec(BASE, environ={}).spec.gate_of("mini").on_missing_logprobs == "escalate"
    relaxed = parse_spec(
        edited("threshold: 0.7", "threshold: 0.7\n  on_missing_logprobs: verbalized"), environ={}
    )
    assert relaxed.spec.gate_of("mini").on_missing_logprobs == "verbalized"


# Tiers: the cascade form.

TIERS = """\
version: 1
name: tiers
prompts: ../../prompts
models:
  mini: {backend: scripted, model: mini-model}
  small: {backend: scripted, model: small-model, capabilities: {logprobs: true}}
  flagship: {backend: scripted, model: flagship-model, capabilities: {vision: true}}
  sorter: {backend: classifier, options: {train_from: taxonomy}}
tiers:
  - name: first
    model: mini
    prompt: triage.md
    gate:
      threshold: 0.8
      always_escalate:
        categories: [security]
  - name: second
    model: small
    prompt: triage.md
    max_tokens: 300
    gate: {threshold: 0.7}
  - name: last
    model: flagship
    prompt: escalate.md
taxonomy:
  categories:
    - {name: billing, description: charges and invoices}
    - {name: shipping, description: deliveries}
    - {name: security, description: hacked accounts, priority: urgent}
    - {name: feedback, description: compliments and complaints, priority: low}
"""

CLOSED_GATE = (
    "{threshold: 0, always_escalate: {needs_vision_without_vision_model: false, suspected_injection: false, "
    "complexity: [], priorities: []}, on_missing_logprobs: verbalized}"
)
"""A gate that keeps every ticket: no threshold, no escalate rule, no hard rule."""


def tiers_edited(old: str, new: str, text: str = TIERS) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def test_a_tiers_file_loads_with_its_helpers() -> None:
    loaded = parse_spec(TIERS, environ={})
    spec = loaded.spec
    assert not loaded.legacy
    assert spec.tier_names == ["first", "second", "last"]
    assert (spec.first_tier.name, spec.last_tier.name) == ("first", "last")
    assert spec.tier("second").max_tokens == 300 and spec.tier("second").categories is None
    assert [spec.role(n) for n in spec.tier_names] == ["triage", "triage", "escalate"]
    assert spec.gate_of("first").always_escalate.categories == ["security"]
    assert spec.last_tier.gate is None
    assert spec.aliases() == ["mini", "small", "flagship"]
    with pytest.raises(KeyError, match="first, second, last"):
        spec.tier("nope")


def test_a_specialist_tier_and_a_classifier_with_a_drafter_load() -> None:
    text = tiers_edited("    model: mini\n", "    model: sorter\n    draft: {model: mini}\n")
    text = tiers_edited("    max_tokens: 300\n", "    max_tokens: 300\n    categories: [billing]\n", text)
    spec = parse_spec(text, environ={}).spec
    assert spec.tier("second").categories == ["billing"]
    draft = spec.first_tier.draft
    assert draft is not None and (draft.model, draft.prompt, draft.max_tokens) == ("mini", "answer.md", 512)
    assert spec.aliases() == ["sorter", "mini", "small", "flagship"]


@pytest.mark.parametrize(
    ("old", "new", "key", "needle", "says"),
    [
        (
            "    model: small\n",
            "    model: smal\n",
            "tiers[1].model",
            "    model: smal",
            "'smal', which is not defined",
        ),
        (
            "    model: mini\n",
            "    model: mini\n    draft: {model: drafter}\n",
            "tiers[0].draft.model",
            "draft: {model: drafter}",
            "'drafter', which is not defined",
        ),
        (
            "    max_tokens: 300\n",
            "    max_tokens: 300\n    categories: [biling]\n",
            "tiers[1].categories[0]",
            "categories: [biling]",
            "tiers[1].categories names unknown categories: biling",
        ),
        (
            "      threshold: 0.8\n",
            "      threshold: 0.8\n      category_thresholds: {refund: 0.9}\n",
            "tiers[0].gate.category_thresholds",
            "category_thresholds: {refund",
            "unknown categories: refund",
        ),
        (
            "        categories: [security]\n",
            "        categories: [securty]\n",
            "tiers[0].gate.always_escalate.categories[0]",
            "[securty]",
            "unknown categories: securty",
        ),
        (
            "    gate: {threshold: 0.7}\n",
            "    gate: {threshold: 0.7, never_escalate: {categories: [feedbak]}}\n",
            "tiers[1].gate.never_escalate.categories[0]",
            "feedbak",
            "unknown categories: feedbak",
        ),
        (
            "        categories: [security]\n",
            "        categories: [security]\n        priorities: [asap]\n",
            "tiers[0].gate.always_escalate.priorities[0]",
            "priorities: [asap]",
            "unknown priorities: asap",
        ),
        (
            "  - name: second\n",
            "  - name: first  # again\n",
            "tiers[1].name",
            "# again",
            "already the name of tiers[0]",
        ),
        ("  - name: second\n", "  - name: human\n", "tiers[1].name", "name: human", "reserved"),
        ("  - name: second\n", "  - name: Second Tier\n", "tiers[1].name", "Second Tier", "pattern"),
        (
            "    prompt: escalate.md\n",
            "    prompt: escalate.md\n    gate: {threshold: 0.5}\n",
            "tiers[2].gate",
            "gate: {threshold: 0.5}",
            "is the last tier",
        ),
        (
            "    prompt: escalate.md\n",
            "    prompt: escalate.md\n    categories: [billing]\n",
            "tiers[2].categories",
            "categories: [billing]",
            "cannot be limited to some categories",
        ),
        ("    gate: {threshold: 0.7}\n", "", "tiers[1]", "- name: second", "has no gate"),
        (
            "    model: mini\n",
            "    model: sorter\n",
            "tiers[0].model",
            "model: sorter",
            "cannot write an answer: add draft:",
        ),
        (
            "    max_tokens: 300\n",
            "    max_tokens: 300\n    categories: [no]\n",
            "tiers[1].categories[0]",
            "categories: [no]",
            'YAML 1.1 reads the unquoted no as the boolean false; write it in quotes ("no")',
        ),
        (
            "    max_tokens: 300\n",
            "    max_tokens: 300\n    temprature: 0.2\n",
            "tiers[1].temprature",
            "temprature",
            "unknown key",
        ),
        (
            "    max_tokens: 300\n",
            "    max_tokens: 300\n    categories: []\n",
            "tiers[1].categories",
            "categories: []",
            "at least 1 item",
        ),
    ],
)
def test_bad_tiers_name_file_line_and_key(old: str, new: str, key: str, needle: str, says: str) -> None:
    text = tiers_edited(old, new)
    err = config_error(text)
    assert (err.file, err.line, err.key) == ("graphs/broken.yaml", line_of(text, needle), key)
    assert says in err.reason


def test_a_tier_behind_one_that_never_escalates_is_unreachable() -> None:
    text = tiers_edited(
        "    gate:\n      threshold: 0.8\n      always_escalate:\n        categories: [security]\n",
        f"    gate: {CLOSED_GATE}\n",
    )
    err = config_error(text)
    assert (err.key, err.line) == ("tiers[1]", line_of(text, "- name: second"))
    assert "tiers[1] (second) can never be reached" in err.reason
    assert "tiers[0] (first) serves every category and never escalates" in err.reason


def test_a_specialist_no_earlier_tier_can_escalate_to_is_unreachable() -> None:
    gate = CLOSED_GATE.replace("threshold: 0,", "threshold: 0.8, never_escalate: {categories: [billing]},")
    text = tiers_edited(
        "    gate:\n      threshold: 0.8\n      always_escalate:\n        categories: [security]\n",
        f"    gate: {gate}\n",
    )
    text = tiers_edited("    max_tokens: 300\n", "    max_tokens: 300\n    categories: [billing]\n", text)
    err = config_error(text)
    assert err.key == "tiers[1]"
    assert "no earlier tier can escalate a ticket of billing" in err.reason
    # The same specialist is reachable once the first tier may escalate billing tickets.
    reachable = text.replace("never_escalate: {categories: [billing]}", "never_escalate: {categories: []}")
    assert parse_spec(reachable, environ={}).spec.tier("second").categories == ["billing"]


def test_a_category_filtered_first_tier_is_unreachable() -> None:
    text = tiers_edited("    model: mini\n", "    model: mini\n    categories: [billing]\n")
    err = config_error(text)
    assert err.key == "tiers[0]"
    assert "no tier before it assigns one" in err.reason


def test_a_blocking_tier_is_fine_when_it_is_the_one_before_the_last() -> None:
    text = tiers_edited("    gate: {threshold: 0.7}\n", f"    gate: {CLOSED_GATE}\n")
    err = config_error(text)  # the last tier can never be reached behind it
    assert err.key == "tiers[2]"
    two = (
        TIERS.split("  - name: second\n")[0]
        + "  - name: last\n    model: flagship\n    prompt: escalate.md\n"
        + "taxonomy:"
        + TIERS.split("taxonomy:")[1]
    )
    assert parse_spec(two, environ={}).spec.tier_names == ["first", "last"]


def test_one_tier_is_not_a_cascade() -> None:
    one = (
        TIERS.split("tiers:\n")[0]
        + "tiers:\n  - name: last\n    model: flagship\n    prompt: escalate.md\n"
        + "taxonomy:"
        + TIERS.split("taxonomy:")[1]
    )
    err = config_error(one)
    assert err.key == "tiers" and "at least 2" in err.reason


@pytest.mark.parametrize("legacy", ["nodes", "gate"])
def test_tiers_and_the_legacy_form_in_one_file_are_refused(legacy: str) -> None:
    extra = (
        "nodes:\n  triage: {model: mini, prompt: triage.md}\n"
        if legacy == "nodes"
        else "gate: {threshold: 0.5}\n"
    )
    text = TIERS.replace("taxonomy:\n", extra + "taxonomy:\n")
    err = config_error(text)
    assert (err.key, err.line) == (legacy, line_of(text, extra.splitlines()[0]))
    assert "move the gate into the first tier (tiers[0].gate)" in err.reason


# The legacy form: nodes:/gate: read as two tiers.

SCRIPTED_AS_TIERS = (
    BASE[: BASE.index("nodes:\n")]
    + """\
tiers:
  - name: mini
    model: mini
    prompt: triage.md
    draft: {model: mini, prompt: answer.md}
    gate:
      threshold: 0.7
      always_escalate:
        categories: [security]
      never_escalate:
        categories: [feedback]
  - name: flagship
    model: flagship
    prompt: escalate.md
"""
    + BASE[BASE.index("taxonomy:\n") :]
)


def test_the_legacy_form_is_read_as_tiers_mini_and_flagship() -> None:
    legacy, tiers = parse_spec(BASE, environ={}), parse_spec(SCRIPTED_AS_TIERS, environ={})
    assert legacy.legacy and not tiers.legacy
    assert legacy.spec == tiers.spec
    assert legacy.content_hash() == tiers.content_hash()
    spec = legacy.spec
    assert spec.tier_names == ["mini", "flagship"]
    assert spec.first_tier.draft is not None and spec.first_tier.draft.prompt == "answer.md"
    assert spec.gate_of("mini").never_escalate.categories == ["feedback"]
    assert not hasattr(spec, "nodes") and not hasattr(spec, "gate")


def test_a_legacy_file_without_a_gate_gets_the_default_gate() -> None:
    text = BASE[: BASE.index("gate:\n")] + BASE[BASE.index("taxonomy:\n") :]
    spec = parse_spec(text, environ={}).spec
    assert spec.gate_of("mini").threshold == 0.8


def test_legacy_keys_are_spelled_as_the_file_spells_them() -> None:
    loaded = parse_spec(BASE, environ={})
    assert loaded.key(("tiers", 0, "prompt")) == "nodes.triage.prompt"
    assert loaded.key(("tiers", 0, "draft", "prompt")) == "nodes.answer.prompt"
    assert loaded.key(("tiers", 1, "prompt")) == "nodes.escalate.prompt"
    assert loaded.key(("tiers", 0, "gate", "threshold")) == "gate.threshold"
    assert parse_spec(TIERS, environ={}).key(("tiers", 1, "prompt")) == "tiers[1].prompt"


def test_a_legacy_unknown_draft_alias_names_nodes_answer() -> None:
    text = edited("answer: {model: mini", "answer: {model: minu")
    err = config_error(text)
    assert (err.key, err.line) == ("nodes.answer.model", line_of(text, "answer: {model: minu"))
    assert "nodes.answer.model refers to 'minu'" in err.reason


def test_a_legacy_gate_on_an_unknown_category_threshold_names_gate() -> None:
    text = edited("  threshold: 0.7\n", "  threshold: 0.7\n  category_thresholds: {refnd: 0.9}\n")
    err = config_error(text)
    assert (err.key, err.line) == ("gate.category_thresholds", line_of(text, "refnd"))
    assert "gate.category_thresholds names unknown categories: refnd" in err.reason


# Several endpoints per alias (``endpoints:``).

OPENAI_MINI = "    backend: scripted\n    model: mini-model\n"


def with_endpoints(*entries: str, extra: str = "") -> str:
    lines = "".join(f"      - {entry}\n" for entry in entries)
    return edited(OPENAI_MINI, f"    backend: openai\n    model: mini-model\n{extra}    endpoints:\n{lines}")


def test_endpoints_are_read_with_weights_limits_and_cool_down() -> None:
    text = with_endpoints(
        "{base_url: 'http://10.0.0.1:8000/v1', weight: 2, max_rps: 5}",
        "{base_url: 'https://b.example/v1', api_key_env: B_KEY, max_tokens_per_min: 90000}",
        extra="    cooldown_s: 5\n",
    )
    mini = parse_spec(text, environ={}).spec.models["mini"]
    assert [(e.base_url, e.weight, e.max_rps, e.api_key_env) for e in mini.endpoints] == [
        ("http://10.0.0.1:8000/v1", 2.0, 5.0, None),
        ("https://b.example/v1", 1.0, None, "B_KEY"),
    ]
    assert (mini.cooldown_s, mini.cooldown_after, mini.endpoints[1].max_tokens_per_min) == (5.0, 3, 90000.0)
    assert [e.base_url for e in mini.endpoint_list()] == ["http://10.0.0.1:8000/v1", "https://b.example/v1"]


@pytest.mark.parametrize(
    ("entry", "key", "needle", "message"),
    [
        (
            "{base_url: 'ftp://b.example/v1'}",
            "models.mini.endpoints[1].base_url",
            "ftp://",
            "not an http(s) URL",
        ),
        (
            "{base_url: 'http://:80/v1'}",
            "models.mini.endpoints[1].base_url",
            "http://:80",
            "not an http(s) URL",
        ),
        (
            "{base_url: 'http://u:pw@b.example/v1'}",
            "models.mini.endpoints[1].base_url",
            "u:pw",
            "credentials",
        ),
        (
            "{base_url: 'http://b.example/v1', weight: 0}",
            "models.mini.endpoints[1].weight",
            "weight: 0",
            "than 0",
        ),
        (
            "{base_url: 'http://b.example/v1', weight: -1}",
            "models.mini.endpoints[1].weight",
            "weight: -1",
            "than 0",
        ),
        (
            "{base_url: 'http://a.example/v1/'}",
            "models.mini.endpoints",
            "a.example/v1'}",  # the line of the list's first entry
            "repeats the base_url",
        ),
    ],
)
def test_bad_endpoints_name_file_line_and_key(entry: str, key: str, needle: str, message: str) -> None:
    text = with_endpoints("{base_url: 'http://a.example/v1'}", entry)
    err = config_error(text)
    assert (err.file, err.key, err.line) == ("graphs/broken.yaml", key, line_of(text, needle))
    assert message in err.reason


def test_credentials_in_an_endpoint_url_are_not_repeated_in_the_error() -> None:
    err = config_error(with_endpoints("{base_url: 'http://user:hunter2@a.example/v1'}"))
    assert "api_key_env" in err.reason
    assert "hunter2" not in str(err)


def test_endpoints_and_base_url_together_are_refused() -> None:
    text = with_endpoints("{base_url: 'http://a.example/v1'}", extra="    base_url: http://c.example/v1\n")
    err = config_error(text)
    assert err.key == "models.mini"
    assert "either base_url" in err.reason


def test_endpoints_need_the_openai_backend() -> None:
    text = edited(OPENAI_MINI, OPENAI_MINI + "    endpoints: [{base_url: 'http://a.example/v1'}]\n")
    assert "endpoints is for the openai backend" in config_error(text).reason


def test_a_single_base_url_is_one_endpoint() -> None:
    text = edited(
        OPENAI_MINI, "    backend: openai\n    model: mini-model\n    base_url: http://a.example/v1\n"
    )
    mini = parse_spec(text, environ={}).spec.models["mini"]
    assert (mini.endpoints, [e.base_url for e in mini.endpoint_list()]) == ([], ["http://a.example/v1"])


def test_a_base_url_from_the_environment_replaces_the_endpoints() -> None:
    text = with_endpoints("{base_url: 'http://a.example/v1'}", "{base_url: 'http://b.example/v1'}")
    mini = parse_spec(text, environ={"TRIAGEGATE_MINI_BASE_URL": "http://127.0.0.1:8000/v1"}).spec.models[
        "mini"
    ]
    assert (mini.base_url, mini.endpoints) == ("http://127.0.0.1:8000/v1", [])
    whole = parse_spec(text, environ={"TRIAGEGATE_MINI": "openai:gpt@http://127.0.0.1:8001/v1"}).spec.models[
        "mini"
    ]
    assert (whole.base_url, whole.endpoints) == ("http://127.0.0.1:8001/v1", [])


def test_endpoints_from_the_environment_replace_the_base_url() -> None:
    text = edited(
        OPENAI_MINI, "    backend: openai\n    model: mini-model\n    base_url: http://a.example/v1\n"
    )
    override = '{"endpoints": [{"base_url": "http://b.example/v1"}, {"base_url": "http://c.example/v1"}]}'
    mini = parse_spec(text, environ={"TRIAGEGATE_MINI": override}).spec.models["mini"]
    assert mini.base_url is None
    assert [e.base_url for e in mini.endpoints] == ["http://b.example/v1", "http://c.example/v1"]
