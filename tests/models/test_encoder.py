"""The sentence encoder (``triagegate.models.encoder``) and the encoder classifier built on it.

These load the real all-MiniLM-L6-v2 weights from the package the ``encoder`` extra
installs; they skip, saying so, where the extra is absent.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.models.test_classifier import EXAMPLES, build, classify, write_graph
from triagegate.errors import ConfigError, ModelUnavailable
from triagegate.models import encoder
from triagegate.models import encoder_classifier as ec
from triagegate.models.base import ClassifyRequest
from triagegate.models.classifier import ClassifierBackend
from triagegate.spec import ModelBinding, load_spec
from triagegate.tuning import encoder_training, training

needs_encoder = pytest.mark.skipif(
    not encoder.available(), reason=f"the '{encoder.EXTRA}' extra is not installed ({encoder.INSTALL_HINT})"
)

TEXTS = [t for ex in EXAMPLES.values() for t in ex]
LABELS = [label for label, ex in EXAMPLES.items() for _ in ex]


@pytest.fixture
def fresh_encoder() -> Any:
    """Forget the shared encoder before and after, for tests that break or swap its package."""
    encoder._reset_for_tests()
    yield
    encoder._reset_for_tests()


@needs_encoder
def test_real_encoder_matches_the_published_similarities() -> None:
    """sentence-transformers' quickstart prints these cosine similarities for all-MiniLM-L6-v2."""
    model = encoder.load_encoder()
    vectors = model.embed(
        ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    )
    similarity = vectors @ vectors.T
    assert similarity[0, 1] == pytest.approx(0.6660, abs=2e-3)
    assert similarity[0, 2] == pytest.approx(0.1046, abs=2e-3)
    assert similarity[1, 2] == pytest.approx(0.1411, abs=2e-3)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(np.ones(3), abs=1e-5)
    identity = model.identity
    assert identity.name == encoder.NAME and identity.weights_sha256 == encoder.WEIGHTS_SHA256
    assert importlib.metadata.version(identity.package) == identity.package_version


@needs_encoder
def test_tanh_gelu_stays_within_float_noise_of_the_exact_one() -> None:
    from scipy.special import erf

    x = np.linspace(-8, 8, 20001, dtype=np.float32)
    exact = 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))
    assert np.abs(encoder.SentenceEncoder._gelu(x.copy()) - exact).max() < 5e-4


@needs_encoder
def test_batches_and_single_texts_agree_in_any_order() -> None:
    model = encoder.load_encoder()
    texts = ["short", "a much longer ticket about a refund that never arrived on my card", "", "PIN blocked"]
    batch = model.embed(texts, batch_size=3)
    for text, row in zip(texts, batch, strict=True):
        assert model.embed_one(text) == pytest.approx(row, abs=1e-5)
    assert model.embed([]).shape == (0, encoder.DIMENSION)


@needs_encoder
def test_long_texts_are_truncated_to_the_window_not_an_error() -> None:
    model = encoder.load_encoder()
    long = "my card was charged twice and " * 400
    assert model.token_count(long) == encoder.MAX_TOKENS
    head = model.embed_one(long)
    # Words past the window change nothing: they were cut off.
    assert model.embed_one(long + " completely different words about parcels") == pytest.approx(
        head, abs=1e-6
    )
    assert model.embed([long, "hi"])[0] == pytest.approx(head, abs=1e-5)


@needs_encoder
def test_long_ticket_classifies_through_the_backend(tmp_path: Path) -> None:
    backend = build(load_spec(write_graph(tmp_path)), tmp_path / "cache")
    label, confidence = classify(backend, "I was charged twice on my invoice. " * 500)
    assert label == "billing" and 0 < confidence <= 1
    assert backend.model == ec.NAME


def test_missing_package_is_a_config_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, fresh_encoder: None, tmp_path: Path
) -> None:
    monkeypatch.setattr(encoder, "PROVIDERS", (("no-such-encoder-package", "nowhere"),))
    with pytest.raises(
        ConfigError, match=r"install the 'encoder' extra \(pip install 'triagegate\[encoder\]'\)"
    ):
        encoder.load_encoder()
    assert not encoder.available() and training.default_kind() == "tfidf"
    with pytest.raises(ConfigError, match=r"triagegate\[encoder\]"):
        training.resolve_kind("encoder")

    # Without the extra, train_from falls back to TF-IDF, and the backend says so by its name.
    backend = build(load_spec(write_graph(tmp_path)), tmp_path / "cache")
    assert backend.model == training.TFIDF_NAME and classify(backend, "reset my password")[0] == "account"
    # Asking for the encoder explicitly fails at build time, at the option.
    loaded = load_spec(write_graph(tmp_path, mini_options={"train_from": "taxonomy", "kind": "encoder"}))
    with pytest.raises(ConfigError, match="encoder") as err:
        build(loaded, tmp_path / "cache2")
    assert err.value.key == "models.mini.options.kind"


def test_missing_tokenizers_module_counts_as_missing(
    monkeypatch: pytest.MonkeyPatch, fresh_encoder: None
) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` raise ImportError
    assert not encoder.available()
    if any(_installed(d) for d, _ in encoder.PROVIDERS):
        with pytest.raises(ConfigError, match=r"'tokenizers'.*encoder"):
            encoder.load_encoder()


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@needs_encoder
def test_weights_with_another_hash_are_refused(monkeypatch: pytest.MonkeyPatch, fresh_encoder: None) -> None:
    monkeypatch.setattr(encoder, "WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(ConfigError, match="are not all-MiniLM-L6-v2's"):
        encoder.load_encoder()


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    loaded = load_spec(write_graph(tmp_path, mini_options={"train_from": "taxonomy", "kind": "bert"}))
    with pytest.raises(ConfigError, match="unknown classifier kind 'bert'"):
        build(loaded, tmp_path / "cache")


@needs_encoder
def test_few_examples_fit_a_tempered_regression_that_round_trips(tmp_path: Path) -> None:
    model = training.fit(TEXTS, LABELS, source="test")
    assert isinstance(model, ec.EncoderClassifier) and model.name == ec.NAME
    meta = model.metadata
    assert meta.method == "logistic-temperature" and meta.temperature > 0 and meta.oof_accuracy is not None
    assert meta.encoder == encoder.load_encoder().identity
    probes = ["charged twice!!", "wher is my parcle", "", "password password password", "ünïcode tëxt"]
    batch = model.predict_proba(probes)
    for text, row in zip(probes, batch, strict=True):
        # The encoder computes in float32; padding in a batch moves the sums by a few ulps.
        assert model.predict_one(text) == pytest.approx(row, abs=1e-6)
    assert [model.labels[i] for i in batch[[0, 1, 3]].argmax(axis=1)] == ["billing", "shipping", "account"]

    path = training.save(model, tmp_path / "m.skops")
    loaded = training.load(path, expected_labels=sorted(EXAMPLES))
    assert isinstance(loaded, ec.EncoderClassifier) and loaded.metadata == meta
    assert loaded.predict_proba(probes) == pytest.approx(batch, abs=1e-12)


@needs_encoder
def test_binary_and_cross_fitted_models() -> None:
    words = {"pos": ["good", "great", "lovely", "fine"], "neg": ["bad", "awful", "broken", "terrible"]}
    texts = [f"it is {w} number {i}" for label in words for i, w in enumerate(words[label] * 15)]
    labels = [label for label in words for _ in range(60)]
    model = training.fit(texts, labels)
    meta = model.metadata
    assert meta.method == "cross-fitted-svm" and model.coef.shape[0] == 1
    assert meta.temperature != 1.0 and meta.oof_accuracy is not None and meta.oof_accuracy > 0.9
    assert model.predict_one("really great") == pytest.approx(
        model.predict_proba(["really great"])[0], abs=1e-6
    )
    assert model.labels[int(model.predict_one("this is awful").argmax())] == "neg"


@needs_encoder
def test_encoder_config_is_validated_and_part_of_the_cache_key(tmp_path: Path) -> None:
    loaded = load_spec(
        write_graph(tmp_path, mini_options={"train_from": "taxonomy", "training": {"embedding_weight": -1}})
    )
    with pytest.raises(ConfigError, match="embedding_weight") as err:
        build(loaded, tmp_path / "cache")
    assert err.value.key == "models.mini.options.training"
    digest = training.training_digest(TEXTS, LABELS)
    keys = {
        training.cache_key(digest, ec.EncoderTrainConfig()),
        training.cache_key(digest, ec.EncoderTrainConfig(embedding_weight=3.0)),
        training.cache_key(digest, training.TrainConfig()),
    }
    assert len(keys) == 3


def _rewrite(path: Path, change: Any) -> Path:
    import skops.io as sio

    payload = sio.load(path, trusted=[])
    change(payload)
    sio.dump(payload, path)
    return path


@needs_encoder
def test_a_model_from_another_encoder_is_refused_with_a_way_out(tmp_path: Path) -> None:
    path = training.save(training.fit(TEXTS, LABELS), tmp_path / "m.skops")

    def other_encoder(payload: dict[str, Any]) -> None:
        meta = ec.EncoderModelMetadata.model_validate_json(payload["metadata"])
        other = meta.encoder.model_copy(update={"weights_sha256": "f" * 64, "package": "other-pkg"})
        payload["metadata"] = meta.model_copy(update={"encoder": other}).model_dump_json()

    _rewrite(path, other_encoder)
    with pytest.raises(
        ConfigError, match=r"trained with the encoder .* train it again with 'triagegate train'"
    ) as err:
        training.load(path)
    assert err.value.file == str(path)
    loaded = load_spec(write_graph(tmp_path, mini_options={"model_path": "m.skops"}))
    with pytest.raises(ConfigError, match=r"trained with the encoder"):
        build(loaded, tmp_path / "cache")


@needs_encoder
def test_a_version_1_encoder_file_is_refused_with_a_way_out(tmp_path: Path) -> None:
    path = training.save(training.fit(TEXTS, LABELS), tmp_path / "m.skops")
    assert ec.OLD_FORMATS == ("triagegate-encoder-classifier/1",)

    def older(payload: dict[str, Any]) -> None:
        payload["format"] = ec.OLD_FORMATS[0]

    with pytest.raises(ConfigError, match=r"older format .*train it again with 'triagegate train'") as err:
        training.load(_rewrite(path, older))
    assert ec.FORMAT in err.value.reason and err.value.file == str(path)


@needs_encoder
def test_corrupt_encoder_model_files_are_refused(tmp_path: Path) -> None:
    whole = training.save(training.fit(TEXTS, LABELS), tmp_path / "whole.skops")
    truncated = tmp_path / "truncated.skops"
    truncated.write_bytes(whole.read_bytes()[:-200])
    with pytest.raises(ConfigError, match="not a readable skops model file"):
        training.load(truncated)

    def bad_weights(payload: dict[str, Any]) -> None:
        payload["coef"] = payload["coef"][:, :10]

    with pytest.raises(ConfigError, match="stored weights do not match"):
        training.load(_rewrite(tmp_path / "whole.skops", bad_weights))

    def bad_metadata(payload: dict[str, Any]) -> None:
        payload["metadata"] = '{"labels": 3}'

    whole = training.save(training.fit(TEXTS, LABELS), tmp_path / "again.skops")
    with pytest.raises(ConfigError, match="metadata is invalid"):
        training.load(_rewrite(whole, bad_metadata))


def test_fit_temperature_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 5)) * 3
    scaled = logits / 2.5  # the true probabilities are softmax(logits / 2.5)
    p = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = np.array([rng.choice(5, p=row) for row in p])
    assert encoder_training.fit_temperature(logits, y) == pytest.approx(2.5, rel=0.1)


def test_a_failed_first_fit_is_retried_not_remembered() -> None:
    """Issue 18: a transient error while obtaining the model must not disable it for good."""
    calls: list[int] = []
    good = training.fit_tfidf(TEXTS, LABELS)

    def flaky() -> tuple[training.Classifier, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("No space left on device")
        return good, "trained"

    backend = ClassifierBackend(
        "mini", ModelBinding(backend="classifier"), obtain=flaky, model_name="tfidf-linear"
    )
    request = ClassifyRequest(text="reset my password", labels=tuple(EXAMPLES))
    with pytest.raises(ModelUnavailable, match="No space left on device"):
        asyncio.run(backend.classify(request))
    result = asyncio.run(backend.classify(request))
    assert result.best[0] == "account" and result.model == "tfidf-linear"
    assert calls == [1, 1] and backend.source == "trained"
    asyncio.run(backend.classify(request))
    assert calls == [1, 1], "once obtained, the model is kept"


@pytest.mark.parametrize("kind", [None, "tfidf"])
def test_triagegate_train_fits_the_kind_the_graph_binds(tmp_path: Path, kind: str | None) -> None:
    from triagegate.cli import main

    options: dict[str, Any] = {"train_from": "taxonomy"} | ({"kind": kind} if kind else {})
    graph = write_graph(tmp_path, mini_options=options)
    data = tmp_path / "tickets.csv"
    data.write_text(
        "text,label\n" + "".join(f'"{t}",{label}\n' for t, label in zip(TEXTS, LABELS, strict=True)),
        encoding="utf-8",
    )
    out = tmp_path / "m.skops"
    assert main(["train", str(graph), str(data), "-o", str(out), "--json"]) == 0
    model = training.load(out)
    assert model.kind == training.resolve_kind(kind)
