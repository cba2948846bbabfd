"""The triage classifier's fitting, file format and lean single-text path (``triagegate.tuning.training``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from triagegate.errors import ConfigError
from triagegate.models import linear
from triagegate.tuning import training

# Three labels with their own vocabulary; 10 examples a label or more are cross-fitted (5 folds).
TOPICS = {
    "billing": ["charged", "invoice", "payment", "refund", "bill", "card"],
    "shipping": ["parcel", "delivery", "courier", "tracking", "package", "shipment"],
    "account": ["password", "login", "email", "username", "profile", "sign in"],
}
TEMPLATES = ["my {} is wrong", "question about the {}", "help with {} please", "the {} again?"]


def corpus(per_label: int) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for label, words in TOPICS.items():
        for i in range(per_label):
            texts.append(TEMPLATES[i % len(TEMPLATES)].format(words[i % len(words)]) + f" #{i}")
            labels.append(label)
    return texts, labels


PROBES = ["", "hello", "I was charged twice for the parcel", "ünïcode tëxt!!", "password password password"]


def test_enough_examples_cross_fit_and_classify_confidently() -> None:
    texts, labels = corpus(12)
    model = training.fit_tfidf(texts, labels)
    assert model.metadata.method == "cross-fitted-svm"
    assert model.labels == ("account", "billing", "shipping")
    assert model.coef.shape == (3, linear.feature_count(model.features)) and model.intercept.shape == (3,)
    probs = model.predict_proba(["my invoice is wrong", "where is my delivery", "reset my password"])
    assert probs.shape == (3, 3) and np.allclose(probs.sum(axis=1), 1.0)
    assert [model.labels[i] for i in probs.argmax(axis=1)] == ["billing", "shipping", "account"]
    assert probs.max(axis=1).min() > 0.5


def test_too_few_examples_fall_back_to_logistic_regression() -> None:
    texts, labels = corpus(12)
    few_texts, few_labels = texts[:-3], labels[:-3]  # "shipping" keeps 9 examples, fewer than 2 x 5 folds
    model = training.fit_tfidf(few_texts, few_labels)
    assert model.metadata.method == "logistic-regression"
    assert model.predict_proba(["where is my delivery"]).argmax() == model.labels.index("shipping")
    assert training.fit_tfidf(few_texts, few_labels, training.TrainConfig(folds=4)).metadata.method == (
        "cross-fitted-svm"
    )


@pytest.mark.parametrize("per_label", [1, 2, 5, 12])
def test_lean_path_matches_batch_path(per_label: int) -> None:
    texts, labels = corpus(per_label)
    model = training.fit_tfidf(texts, labels)
    assert model.fast_path
    batch = model.predict_proba(PROBES)
    for text, row in zip(PROBES, batch, strict=True):
        assert model.predict_one(text) == pytest.approx(row, abs=1e-9)


@pytest.mark.parametrize(("per_label", "method"), [(2, "logistic-regression"), (12, "cross-fitted-svm")])
def test_two_labels_store_one_logit_row(per_label: int, method: str) -> None:
    texts, labels = corpus(per_label)
    keep = [i for i, label in enumerate(labels) if label != "account"]
    model = training.fit_tfidf([texts[i] for i in keep], [labels[i] for i in keep])
    assert model.metadata.method == method
    assert model.coef.shape[0] == 1 and model.intercept.shape == (1,)
    assert model.fast_path
    row = model.predict_proba(["the courier lost my parcel"])[0]
    assert model.labels[int(row.argmax())] == "shipping" and row.sum() == pytest.approx(1.0)
    assert model.predict_one("the courier lost my parcel") == pytest.approx(row, abs=1e-9)


def test_fitting_is_deterministic() -> None:
    texts, labels = corpus(10)
    first, second = training.fit_tfidf(texts, labels), training.fit_tfidf(texts, labels)
    assert np.array_equal(first.coef, second.coef) and np.array_equal(first.intercept, second.intercept)


def test_config_is_validated_and_part_of_the_cache_key() -> None:
    with pytest.raises(ValidationError):
        training.TrainConfig(folds=1)
    with pytest.raises(ValidationError):
        training.TrainConfig(calibration_C=0)
    with pytest.raises(ValidationError):
        training.TrainConfig.model_validate({"colour": "red"})
    default = training.cache_key("d" * 64, training.TrainConfig())
    assert default != training.cache_key("d" * 64, training.TrainConfig(folds=3))
    assert default == training.cache_key("d" * 64, training.TrainConfig())


def test_cache_key_changes_with_the_file_format(monkeypatch: pytest.MonkeyPatch) -> None:
    before = training.cache_key("d" * 64, training.TrainConfig())
    monkeypatch.setattr(training, "FORMAT", "triagegate-classifier/999")
    assert training.cache_key("d" * 64, training.TrainConfig()) != before


def test_round_trip_keeps_probabilities_and_needs_no_trusted_types(tmp_path: Path) -> None:
    import skops.io as sio

    texts, labels = corpus(8)
    model = training.fit_tfidf(texts, labels, source="unit")
    path = training.save(model, tmp_path / "m.skops")
    assert sio.get_untrusted_types(file=path) == []
    loaded = training.load(path, expected_labels=["shipping", "billing", "account"])
    assert loaded.fast_path and loaded.metadata == model.metadata
    assert np.array_equal(loaded.predict_proba(PROBES), model.predict_proba(PROBES))


def test_cross_fitted_scores_come_from_svms_that_never_saw_the_row() -> None:
    # One private feature per row and random labels: only memorising a row predicts it, so
    # scores from the fold that held it out are at chance while the averaged SVMs, each
    # having seen the row in all folds but one, recall most training labels.
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 25)
    rng.shuffle(y)
    x = np.eye(len(y))
    crossed = training.cross_fit_svm(x, y, folds=5, C=10.0, class_weight=None, max_iter=5000)
    assert crossed.scores.shape == (100, 4) and crossed.coef.shape == (4, 100)
    assert crossed.accuracy(y) < 0.45
    assert np.mean((x @ crossed.coef.T + crossed.intercept).argmax(1) == y) > 0.9


def test_cross_fit_of_two_labels_scores_one_column() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 30)
    x = rng.normal(size=(60, 3)) + y[:, None] * 3.0
    crossed = training.cross_fit_svm(x, y, folds=3, C=1.0, class_weight="balanced", max_iter=2000)
    assert crossed.scores.shape == (60, 1) and crossed.coef.shape == (1, 3)
    assert crossed.accuracy(y) > 0.9
    coef, intercept = crossed.logistic_calibrated(y, C=1.0, max_iter=1000)
    assert coef.shape == (1, 3) and intercept.shape == (1,)


def test_a_format_1_file_is_refused_with_a_way_out(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    texts, labels = corpus(3)
    old = Pipeline([("features", TfidfVectorizer()), ("classifier", LogisticRegression())]).fit(texts, labels)
    path = tmp_path / "old.skops"
    sio.dump({"format": "triagegate-classifier/1", "metadata": "{}", "pipeline": old}, path)
    with pytest.raises(ConfigError, match="older format") as err:
        training.load(path)
    assert "triagegate train" in str(err.value) and err.value.file == str(path)


def test_weights_that_do_not_fit_the_labels_are_refused(tmp_path: Path) -> None:
    import skops.io as sio

    texts, labels = corpus(6)
    model = training.fit_tfidf(texts, labels)
    path = tmp_path / "bad.skops"
    payload = {
        "format": training.FORMAT,
        "metadata": model.metadata.model_dump_json(),
        "features": model.features,
        "coef": model.coef[:2],
        "intercept": model.intercept[:2],
    }
    sio.dump(payload, path)
    with pytest.raises(ConfigError, match="do not match"):
        training.load(path)
