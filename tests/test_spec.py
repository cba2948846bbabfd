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
