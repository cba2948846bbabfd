"""Fit, save and load the triage classifier: TF-IDF features, cross-fitted linear SVMs, a softmax on top.

Features are a union of word (1-2 gram) and character (``char_wb`` 2-5 gram) TF-IDF with
sublinear term frequency. On them, :func:`fit`

1. splits the training rows into ``TrainConfig.folds`` stratified folds and fits a one-vs-rest
   :class:`~sklearn.svm.LinearSVC` on all folds but one, scoring the held-out fold: every
   training row gets a score per label from a model that never saw it;
2. fits a multinomial :class:`~sklearn.linear_model.LogisticRegression` (the *calibrator*)
   on those out-of-fold scores, so the probabilities it outputs are fitted to how often the
   SVMs are right on tickets they have not seen (it also learns which labels get confused,
   which is where most of the accuracy gain comes from);
3. serves the average of the fold SVMs through the calibrator. Averaging (rather than one
   refit on all rows) keeps the scores the calibrator sees at prediction time distributed
   like the ones it was fitted on, and saves a fit.

Every step is linear in the features, so the whole model collapses into one weight matrix
and bias: ``probabilities = softmax(W @ tfidf(text) + b)``. That is what a file stores.

Why this model (BANKING77, chosen by 5-fold cross-validation on its training file; see
``bench/RESULTS.md``, "Classifier exploration"): the previous multinomial logistic regression
on the same features scored 90.2% out of fold (91.8% on the test file), took 25-34 s of CPU
to fit 10,003 rows (L-BFGS updating 3.4M parameters) and every single linear model or
average of them tried stayed near that. The cross-fitted model scores 91.4% out of fold
(92.6% on test), fits in about 10 s, and its probabilities rank errors lower: out of fold it
keeps 76.7% of tickets at 98.5% accuracy against 70.3%.

Training sets with fewer than ``2 * folds`` examples of some label get a plain multinomial
logistic regression instead (see :func:`fit`); it collapses into the same weights and file.

Files are written with :mod:`skops.io`, never pickle, and loaded only when every type in
them is one skops trusts by default (:data:`TRUSTED_TYPES` adds none), so a model file
cannot run code on load. Each file carries :class:`ModelMetadata`: the label set, the
sha256 of the training data, the training config, library versions and the creation time.
Loading refuses, with a :class:`ConfigError` naming the file, a file that is missing,
corrupt, not a triagegate model, written in an older format, or whose labels differ from
the ones the caller expects.

Single-ticket prediction bypasses scikit-learn's per-call validation (about 1 ms) with
:class:`LinearTextScorer`, which computes the same probabilities from the fitted
vocabularies and weights in well under a millisecond; it checks itself against the
batch path after fitting or loading and steps aside if the two ever disagree.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from triagegate.errors import ConfigError
from triagegate.models import artifacts
from triagegate.models.linear import LinearTextScorer, Matrix, Probabilities, feature_count, softmax_rows

if TYPE_CHECKING:
    from triagegate.models.encoder_classifier import EncoderClassifier, EncoderTrainConfig
    from triagegate.spec import GraphSpec

FORMAT = "triagegate-classifier/2"
"""Version 2: one collapsed linear softmax over the TF-IDF features (version 1 stored a whole
scikit-learn pipeline ending in a logistic regression). Files of other versions are refused."""
OLD_FORMATS = ("triagegate-classifier/1",)
TRUSTED_TYPES: tuple[str, ...] = ()
"""Types trusted on load beyond skops's own defaults: none. A file that needs more is refused."""

TFIDF_NAME = "tfidf-linear"
"""The TF-IDF classifier's model name (the Outcome's triage ``model`` when it runs)."""


class TrainConfig(BaseModel):
    """Hyper-parameters of the classifier; part of the cache key and of every saved file.

    Defaults were chosen by 5-fold cross-validation on BANKING77's training file only
    (accuracy and the share of tickets kept at 98.5% accuracy), never on its test file.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (2, 5)
    C: float = Field(default=0.5, gt=0)
    """Inverse regularisation of the linear SVMs (0.3 was worse in cross-validation, 1.0 mixed)."""
    class_weight: Literal["balanced"] | None = "balanced"
    """Weighting of the SVMs' training rows, so rare labels are not drowned by frequent ones."""
    folds: int = Field(default=5, ge=2, le=20)
    """Cross-fitting folds: the out-of-fold scores the calibrator learns from (3 did a little worse)."""
    calibration_C: float = Field(default=1.0, gt=0)
    """Inverse regularisation of the logistic regression on the SVM scores (0.3 gave lower coverage)."""
    max_iter: int = Field(default=1000, ge=10)
    """Iteration cap of each SVM and of the calibrator."""
    fallback_C: float = Field(default=20.0, gt=0)
    """Inverse regularisation of the plain logistic regression fitted instead when a label has
    fewer than ``2 * folds`` examples (too few to cross-fit; the model triagegate used before)."""

    def fingerprint(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


class ModelMetadata(BaseModel):
    """What a saved model was trained on and with; stored beside the weights in the file."""

    model_config = ConfigDict(extra="ignore")

    format: str = FORMAT
    labels: list[str]
    label_counts: dict[str, int]
    n_examples: int
    training_sha256: str
    config: TrainConfig
    method: Literal["cross-fitted-svm", "logistic-regression"] = "cross-fitted-svm"
    """How the weights were fitted: see :func:`fit`."""
    source: str = ""
    """Where the training data came from (``taxonomy``, a file name), for humans."""
    sklearn_version: str
    skops_version: str
    created_at: str
    train_seconds: float


def training_digest(texts: Sequence[str], labels: Sequence[str]) -> str:
    """sha256 of the ordered ``(text, label)`` pairs: equal digests mean identical training data."""
    h = hashlib.sha256()
    for text, label in zip(texts, labels, strict=True):
        for part in (label, text):
            encoded = part.encode("utf-8")
            h.update(len(encoded).to_bytes(8, "little"))
            h.update(encoded)
    return h.hexdigest()


def label_counts(texts: Sequence[str], labels: Sequence[str]) -> Counter[str]:
    """How many examples each label has, after checking the rows can train a classifier at all.

    Raises ValueError for texts and labels of different lengths or fewer than two labels.
    """
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    counts = Counter(labels)
    if len(counts) < 2:
        raise ValueError(f"need at least two distinct labels to train, got {sorted(counts)}")
    return counts


def cache_key(digest: str, config: TrainConfig | EncoderTrainConfig) -> str:
    """Name for a cached model: changes with the data, the kind and config, the file format,
    scikit-learn and (for the encoder classifier) the encoder's weights."""
    import sklearn

    if isinstance(config, TrainConfig):
        payload = f"{FORMAT}\n{digest}\n{config.fingerprint()}\n{sklearn.__version__}"
    else:
        from triagegate.models import encoder_classifier as ec
        from triagegate.models.encoder import MAX_TOKENS, WEIGHTS_SHA256

        payload = f"{ec.FORMAT}\n{digest}\n{config.fingerprint()}\n{sklearn.__version__}\n{WEIGHTS_SHA256}\n{MAX_TOKENS}"
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class TrainedModel:
    """Fitted vectorisers and the collapsed linear softmax, with metadata (the TF-IDF classifier).

    ``coef`` has one row per label (a single row for two labels: the logit of the second),
    ``labels`` is the column order of the probabilities.
    """

    kind = "tfidf"
    name = TFIDF_NAME

    def __init__(self, features: Any, coef: Matrix, intercept: Matrix, metadata: ModelMetadata) -> None:
        self.features = features
        self.coef: Matrix = np.asarray(coef, dtype=np.float64)
        self.intercept: Matrix = np.asarray(intercept, dtype=np.float64)
        self.metadata = metadata
        self.labels: tuple[str, ...] = tuple(metadata.labels)
        self._scorer = self._checked_scorer()

    def _checked_scorer(self) -> LinearTextScorer | None:
        try:
            scorer = LinearTextScorer(self.features, self.coef, self.intercept)
        except (AttributeError, ValueError, IndexError, TypeError):
            return None
        probes = ["", "hello", "I was charged twice, please refund me!", " ".join(self.labels)]
        expected = self.predict_proba(probes)
        got = np.vstack([scorer(p) for p in probes])
        return scorer if np.allclose(expected, got, rtol=1e-7, atol=1e-9) else None

    @property
    def fast_path(self) -> bool:
        """Whether single-text prediction uses the lean scorer (it matched the batch path)."""
        return self._scorer is not None

    def logits(self, texts: Sequence[str]) -> Matrix:
        """``W @ tfidf(text) + b`` for many texts, shape ``(len(texts), rows of coef)``."""
        x = self.features.transform(list(texts))
        out: Matrix = np.asarray(x @ self.coef.T, dtype=np.float64) + self.intercept
        return out

    def predict_proba(self, texts: Sequence[str]) -> Probabilities:
        """Probabilities for many texts at once, shape ``(len(texts), len(labels))``."""
        return softmax_rows(self.logits(texts))

    def predict_one(self, text: str) -> Probabilities:
        """Probabilities for one text, on the lean path when available."""
        if self._scorer is not None:
            return self._scorer(text)
        row: Probabilities = self.predict_proba([text])[0]
        return row


def build_features(config: TrainConfig) -> Any:
    """The unfitted TF-IDF union: word n-grams and ``char_wb`` n-grams, sublinear tf, l2 per block."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    return FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=config.word_ngrams, sublinear_tf=True)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=config.char_ngrams, sublinear_tf=True)),
        ]
    )


def linear_svm(
    x: Any, y: npt.NDArray[np.int64], *, C: float, class_weight: str | None, max_iter: int
) -> tuple[Matrix, Matrix]:
    """Weights and bias of a LinearSVC on ``x, y``: one row per label, or one row for two labels.

    With more than two labels the rows are centred (their mean removed): softmax ignores a
    shift shared by all labels, and centred scores let the calibrator converge in a third of
    the iterations. Both classifier kinds cross-fit their SVMs with this.
    """
    from sklearn.svm import LinearSVC

    svm = LinearSVC(C=C, class_weight=class_weight, max_iter=max_iter, random_state=0).fit(x, y)
    coef = np.asarray(svm.coef_, dtype=np.float64)
    intercept = np.asarray(svm.intercept_, dtype=np.float64)
    if coef.shape[0] > 1:
        coef = coef - coef.mean(axis=0, keepdims=True)
        intercept = intercept - intercept.mean()
    return coef, intercept


@dataclass(frozen=True)
class CrossFit:
    """Linear SVMs cross-fitted on stratified folds: what both classifier kinds calibrate.

    ``scores`` holds, for every training row, the scores of the fold SVM that did not see it
    (one column per label, or one for two labels); ``coef``/``intercept`` are the fold SVMs'
    mean, the model served (averaging keeps the scores it gives new tickets distributed like
    the out-of-fold ones a calibrator is fitted on, and saves a refit on all rows).
    """

    scores: Matrix
    coef: Matrix
    intercept: Matrix

    def accuracy(self, y: npt.NDArray[np.int64]) -> float:
        """Accuracy of the out-of-fold scores' predictions."""
        predicted = (
            (self.scores[:, 0] > 0).astype(np.int64) if self.scores.shape[1] == 1 else self.scores.argmax(1)
        )
        return float(np.mean(predicted == y))

    def logistic_calibrated(
        self, y: npt.NDArray[np.int64], *, C: float, max_iter: int
    ) -> tuple[Matrix, Matrix]:
        """Weights of the mean SVM served through a multinomial logistic regression fitted on ``scores``.

        Both are linear, so the result is one weight matrix and bias over the features.
        """
        from sklearn.linear_model import LogisticRegression

        calibrator = LogisticRegression(C=C, max_iter=max_iter).fit(self.scores, y)
        a = np.asarray(calibrator.coef_, dtype=np.float64)
        return a @ self.coef, a @ self.intercept + np.asarray(calibrator.intercept_, dtype=np.float64)


def cross_fit_svm(
    x: Any, y: npt.NDArray[np.int64], *, folds: int, C: float, class_weight: str | None, max_iter: int
) -> CrossFit:
    """:func:`linear_svm` fitted on ``folds`` stratified folds (seeded) of ``x, y``; see :class:`CrossFit`.

    Every label needs at least ``folds`` rows.
    """
    from sklearn.model_selection import StratifiedKFold

    rows = 1 if int(y.max()) + 1 <= 2 else int(y.max()) + 1
    scores = np.zeros((len(y), rows))
    coef_sum = np.zeros((rows, x.shape[1]))
    intercept_sum = np.zeros(rows)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=0)
    for train_rows, held_rows in splitter.split(np.zeros(len(y)), y):
        coef, intercept = linear_svm(
            x[train_rows], y[train_rows], C=C, class_weight=class_weight, max_iter=max_iter
        )
        scores[held_rows] = x[held_rows] @ coef.T + intercept
        coef_sum += coef
        intercept_sum += intercept
    return CrossFit(scores, coef_sum / folds, intercept_sum / folds)


def fit_tfidf(
    texts: Sequence[str], labels: Sequence[str], config: TrainConfig | None = None, *, source: str = ""
) -> TrainedModel:
    """Train on ``texts``/``labels`` (at least two distinct labels). Deterministic for equal inputs.

    With at least ``2 * config.folds`` examples of every label (each fold then holds out two
    or more of each) the model is cross-fitted as the module docstring describes. With fewer,
    the out-of-fold scores carry too little signal to fit a calibrator on: its probabilities
    stay near uniform, and on scores that are noise it can even learn to invert the SVMs. A
    plain multinomial logistic regression is fitted on the features instead, the model
    triagegate used before, whose probabilities are its own (:attr:`ModelMetadata.method`
    says which was fitted).
    """
    import warnings

    import sklearn
    import skops
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    config = config or TrainConfig()
    counts = label_counts(texts, labels)
    started = time.perf_counter()
    names = sorted(counts)
    code = {name: i for i, name in enumerate(names)}
    y = np.fromiter((code[label] for label in labels), dtype=np.int64, count=len(labels))
    features = build_features(config)
    x = features.fit_transform(list(texts))
    method: Literal["cross-fitted-svm", "logistic-regression"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if min(counts.values()) < 2 * config.folds:
            method = "logistic-regression"
            regression = LogisticRegression(
                C=config.fallback_C, class_weight=config.class_weight, max_iter=max(config.max_iter, 3000)
            ).fit(x, y)
            coef_all = np.asarray(regression.coef_, dtype=np.float64)
            intercept_all = np.asarray(regression.intercept_, dtype=np.float64)
        else:
            method = "cross-fitted-svm"
            crossed = cross_fit_svm(
                x,
                y,
                folds=config.folds,
                C=config.C,
                class_weight=config.class_weight,
                max_iter=config.max_iter,
            )
            coef_all, intercept_all = crossed.logistic_calibrated(
                y, C=config.calibration_C, max_iter=config.max_iter
            )
    metadata = ModelMetadata(
        labels=names,
        label_counts=dict(sorted(counts.items())),
        n_examples=len(texts),
        training_sha256=training_digest(texts, labels),
        config=config,
        method=method,
        source=source,
        sklearn_version=sklearn.__version__,
        skops_version=skops.__version__,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        train_seconds=round(time.perf_counter() - started, 3),
    )
    return TrainedModel(features, coef_all, intercept_all, metadata)


def save_tfidf(model: TrainedModel, path: str | Path) -> Path:
    """Write ``model`` to ``path`` with skops, atomically (a reader never sees half a file)."""
    return artifacts.dump_linear(model, FORMAT, path)


def label_mismatch(have: Sequence[str], want: Sequence[str]) -> str | None:
    """A sentence naming labels missing from ``have`` and extra in it, or None when the sets agree."""
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if not missing and not extra:
        return None
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if extra:
        parts.append(f"extra {', '.join(extra)}")
    return "; ".join(parts)


def load(path: str | Path, *, expected_labels: Sequence[str] | None = None) -> Classifier:
    """Read a model written by :func:`save`, of either kind. Raises :class:`ConfigError` naming ``path``.

    An encoder classifier's file is refused when the installed encoder differs from the one it
    was trained with, or when the ``encoder`` extra is missing (the message names it).
    """
    import skops.io as sio

    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ConfigError(
            "classifier model file not found" if not path.exists() else "not a file", file=where
        )
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:
        raise ConfigError(
            f"not a readable skops model file ({type(exc).__name__}: {exc})", file=where
        ) from None
    refused = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if refused:
        raise ConfigError(
            f"refusing to load: the file contains untrusted types {', '.join(refused)}", file=where
        )
    try:
        payload = sio.load(path, trusted=list(TRUSTED_TYPES))
    except Exception as exc:
        raise ConfigError(
            f"not a readable skops model file ({type(exc).__name__}: {exc})", file=where
        ) from None
    found = payload.get("format") if isinstance(payload, dict) else None
    from triagegate.models import encoder_classifier as ec

    if found in OLD_FORMATS or found in ec.OLD_FORMATS:
        current = ec.FORMAT if found in ec.OLD_FORMATS else FORMAT
        raise ConfigError(
            f"the model was written in an older format ({found}; this version reads {current}): "
            "train it again with 'triagegate train'",
            file=where,
        )
    model: Classifier
    if found == ec.FORMAT:
        model = ec.from_payload(payload, where)
    elif found != FORMAT or not all(k in payload for k in ("features", "coef", "intercept")):
        raise ConfigError(
            f"not a triagegate classifier (expected format {FORMAT!r} or {ec.FORMAT!r})", file=where
        )
    else:
        model = _tfidf_from_payload(payload, where)
    if expected_labels is not None:
        problem = label_mismatch(model.metadata.labels, expected_labels)
        if problem:
            raise ConfigError(f"the model's labels differ from the graph's taxonomy: {problem}", file=where)
    return model


def _tfidf_from_payload(payload: dict[str, Any], where: str) -> TrainedModel:
    try:
        metadata = ModelMetadata.model_validate_json(payload["metadata"])
    except (ValidationError, TypeError) as exc:
        raise ConfigError(f"the model's metadata is invalid: {exc}", file=where) from None
    coef, intercept = payload["coef"], payload["intercept"]
    rows = 1 if len(metadata.labels) == 2 else len(metadata.labels)
    if (
        len(metadata.labels) < 2
        or not isinstance(coef, np.ndarray)
        or not isinstance(intercept, np.ndarray)
        or coef.shape != (rows, feature_count(payload["features"]))
        or intercept.shape != (rows,)
    ):
        raise ConfigError("the stored weights do not match the model's labels and features", file=where)
    return TrainedModel(payload["features"], coef, intercept, metadata)


# --- Kinds: which classifier to fit, and the calls that work for either. ---

Kind = Literal["encoder", "tfidf"]
KINDS: tuple[Kind, ...] = ("encoder", "tfidf")


def default_kind() -> Kind:
    """``encoder`` when its extra is installed, else ``tfidf`` (the fallback without it)."""
    from triagegate.models import encoder

    return "encoder" if encoder.available() else "tfidf"


def resolve_kind(kind: str | None) -> Kind:
    """``kind`` checked (``None``: :func:`default_kind`); ConfigError for an unknown kind or a missing extra."""
    if kind is None:
        return default_kind()
    if kind == "tfidf":
        return "tfidf"
    if kind == "encoder":
        from triagegate.models import encoder

        if not encoder.available():
            raise ConfigError(
                f"kind 'encoder' needs the '{encoder.EXTRA}' extra, which is not installed: "
                f"{encoder.INSTALL_HINT} (or use kind: tfidf)"
            )
        return "encoder"
    raise ConfigError(f"unknown classifier kind {kind!r}; known: {', '.join(KINDS)}")


def model_name(kind: Kind) -> str:
    """The name a backend reports for a classifier of ``kind`` (the Outcome's triage ``model``)."""
    if kind == "tfidf":
        return TFIDF_NAME
    from triagegate.models.encoder_classifier import NAME

    return NAME


def config_for(kind: Kind, overrides: Mapping[str, Any] | None = None) -> TrainConfig | EncoderTrainConfig:
    """The training config of ``kind`` with ``overrides`` (raises pydantic's ValidationError)."""
    if kind == "tfidf":
        return TrainConfig.model_validate(dict(overrides or {}))
    from triagegate.models.encoder_classifier import EncoderTrainConfig

    return EncoderTrainConfig.model_validate(dict(overrides or {}))


def fit(
    texts: Sequence[str],
    labels: Sequence[str],
    config: TrainConfig | EncoderTrainConfig | None = None,
    *,
    kind: str | None = None,
    source: str = "",
) -> Classifier:
    """Train a classifier: of ``kind``, else of the config's kind, else of :func:`default_kind`.

    This is what ``triagegate train``, ``eval --train`` and ``calibrate --train`` call, so they
    fit the encoder classifier wherever its extra is installed and the TF-IDF one elsewhere.
    """
    if kind is None and config is not None:
        kind = "tfidf" if isinstance(config, TrainConfig) else "encoder"
    resolved = resolve_kind(kind)
    if resolved == "tfidf":
        if config is not None and not isinstance(config, TrainConfig):
            raise ValueError("a TF-IDF classifier needs a TrainConfig")
        return fit_tfidf(texts, labels, config, source=source)
    from triagegate.models.encoder_classifier import EncoderTrainConfig
    from triagegate.tuning import encoder_training

    if config is not None and not isinstance(config, EncoderTrainConfig):
        raise ValueError("an encoder classifier needs an EncoderTrainConfig")
    return encoder_training.fit(texts, labels, config, source=source)


def fit_for_graph(
    spec: GraphSpec, texts: Sequence[str], labels: Sequence[str], *, source: str = ""
) -> Classifier:
    """Fit the classifier the graph's first tier binds: its ``options.kind`` and ``options.training``.

    What ``triagegate train`` (and ``eval``/``calibrate --train``) should call, so a graph that
    says ``kind: tfidf`` gets a TF-IDF model from the CLI too. A first tier that is not a
    classifier gets the default kind. Bad options raise :class:`ConfigError` at the option.
    """
    alias = spec.first_tier.model
    binding = spec.models[alias]
    options = binding.options if binding.backend == "classifier" else {}
    key = f"models.{alias}.options"
    try:
        kind = resolve_kind(options.get("kind"))
    except ConfigError as exc:
        raise ConfigError(exc.reason, key=f"{key}.kind") from None
    try:
        config = config_for(kind, options.get("training") or {})
    except (ValidationError, TypeError) as exc:
        raise ConfigError(f"invalid training settings: {exc}", key=f"{key}.training") from None
    return fit(texts, labels, config, kind=kind, source=source)


def save(model: Classifier, path: str | Path) -> Path:
    """Write a classifier of either kind to ``path`` with skops, atomically."""
    if isinstance(model, TrainedModel):
        return save_tfidf(model, path)
    from triagegate.models import encoder_classifier

    return encoder_classifier.save(model, path)


Classifier: TypeAlias = "TrainedModel | EncoderClassifier"
"""A fitted classifier of either kind: ``labels``, ``metadata``, ``name``, ``predict_proba``, ``predict_one``."""
