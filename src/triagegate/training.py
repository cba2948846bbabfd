"""Fit, save and load the triage classifier: TF-IDF features and a logistic regression.

The model is a scikit-learn pipeline: a union of word (1-2 gram) and character (``char_wb``
2-5 gram) TF-IDF features with sublinear term frequency, feeding a multinomial logistic
regression whose class probability is the triage confidence. This was the best of the
plain-sklearn variants measured on BANKING77 and Bitext (see ``bench/RESULTS.md``).

Files are written with :mod:`skops.io`, never pickle, and loaded only when every type in
them is one skops trusts by default (:data:`TRUSTED_TYPES` adds none), so a model file
cannot run code on load. Each file carries :class:`ModelMetadata`: the label set, the
sha256 of the training data, the training config, library versions and the creation time.
Loading refuses, with a :class:`ConfigError` naming the file, a file that is missing,
corrupt, not a triagegate model, or whose labels differ from the ones the caller expects.

Single-ticket prediction bypasses scikit-learn's per-call validation (about 1 ms) with
:class:`_LinearTextScorer`, which computes the same probabilities from the fitted
vocabularies and weights in well under a millisecond; it checks itself against the
pipeline after fitting or loading and steps aside if the two ever disagree.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from triagegate.errors import ConfigError

FORMAT = "triagegate-classifier/1"
TRUSTED_TYPES: tuple[str, ...] = ()
"""Types trusted on load beyond skops's own defaults: none. A file that needs more is refused."""

Probabilities = npt.NDArray[np.float64]


class TrainConfig(BaseModel):
    """Hyper-parameters of the classifier; part of the cache key and of every saved file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (2, 5)
    C: float = Field(default=20.0, gt=0)
    class_weight: Literal["balanced"] | None = "balanced"
    max_iter: int = Field(default=3000, ge=10)

    def fingerprint(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


class ModelMetadata(BaseModel):
    """What a saved model was trained on and with; stored beside the estimator in the file."""

    model_config = ConfigDict(extra="ignore")

    format: str = FORMAT
    labels: list[str]
    label_counts: dict[str, int]
    n_examples: int
    training_sha256: str
    config: TrainConfig
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


def cache_key(digest: str, config: TrainConfig) -> str:
    """Name for a cached model: changes with the data, the config and the scikit-learn version."""
    import sklearn

    payload = f"{FORMAT}\n{digest}\n{config.fingerprint()}\n{sklearn.__version__}"
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class _LinearTextScorer:
    """Probabilities for one text straight from a fitted TF-IDF union + logistic regression.

    Mirrors what the pipeline does (analyse, sublinear tf times idf, l2-normalise each
    vectoriser's block, dot with the weights, softmax) without building sparse matrices or
    validating inputs. Built only for the configuration :func:`fit` produces.
    """

    def __init__(self, pipeline: Any) -> None:
        union, regression = pipeline.steps[0][1], pipeline.steps[-1][1]
        self.blocks: list[tuple[Callable[[str], list[str]], dict[str, int], Probabilities, int]] = []
        offset = 0
        for _, vectorizer in union.transformer_list:
            if not (
                vectorizer.sublinear_tf
                and vectorizer.use_idf
                and vectorizer.norm == "l2"
                and not vectorizer.binary
            ):
                raise ValueError("unsupported vectoriser settings")
            vocabulary: dict[str, int] = vectorizer.vocabulary_
            self.blocks.append((vectorizer.build_analyzer(), vocabulary, vectorizer.idf_, offset))
            offset += len(vocabulary)
        self.weights: Probabilities = np.ascontiguousarray(regression.coef_.T, dtype=np.float64)
        self.bias: Probabilities = np.asarray(regression.intercept_, dtype=np.float64)
        if self.weights.shape[0] != offset:
            raise ValueError("feature count does not match the regression's weights")

    def __call__(self, text: str) -> Probabilities:
        columns: list[int] = []
        values: list[Probabilities] = []
        for analyze, vocabulary, idf, offset in self.blocks:
            found: list[int] = []
            weights: list[float] = []
            for token, count in Counter(analyze(text)).items():
                j = vocabulary.get(token)
                if j is not None:
                    found.append(j)
                    weights.append((1.0 + math.log(count)) * idf[j])
            if found:
                block = np.asarray(weights)
                block /= math.sqrt(float(block @ block))
                columns.extend(j + offset for j in found)
                values.append(block)
        z = self.bias.copy()
        if columns:
            z += np.concatenate(values) @ self.weights[columns]
        if z.shape[0] == 1:
            p = 1.0 / (1.0 + math.exp(-float(z[0])))
            return np.array([1.0 - p, p])
        z -= z.max()
        e = np.exp(z)
        out: Probabilities = e / e.sum()
        return out


class TrainedModel:
    """A fitted pipeline with its metadata; ``labels`` is the column order of probabilities."""

    def __init__(self, pipeline: Any, metadata: ModelMetadata) -> None:
        self.pipeline = pipeline
        self.metadata = metadata
        self.labels: tuple[str, ...] = tuple(str(c) for c in pipeline.classes_)
        self._scorer = self._checked_scorer()

    def _checked_scorer(self) -> _LinearTextScorer | None:
        try:
            scorer = _LinearTextScorer(self.pipeline)
        except (AttributeError, ValueError, IndexError, TypeError):
            return None
        probes = ["", "hello", "I was charged twice, please refund me!", " ".join(self.labels)]
        expected = self.predict_proba(probes)
        got = np.vstack([scorer(p) for p in probes])
        return scorer if np.allclose(expected, got, rtol=1e-7, atol=1e-9) else None

    @property
    def fast_path(self) -> bool:
        """Whether single-text prediction uses the lean scorer (it matched the pipeline)."""
        return self._scorer is not None

    def predict_proba(self, texts: Sequence[str]) -> Probabilities:
        """Probabilities for many texts at once, shape ``(len(texts), len(labels))``."""
        out: Probabilities = np.asarray(self.pipeline.predict_proba(list(texts)), dtype=np.float64)
        return out

    def predict_one(self, text: str) -> Probabilities:
        """Probabilities for one text, on the lean path when available."""
        if self._scorer is not None:
            return self._scorer(text)
        row: Probabilities = self.predict_proba([text])[0]
        return row


def build_pipeline(config: TrainConfig) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline

    features = FeatureUnion(
        [
            ("word", TfidfVectorizer(ngram_range=config.word_ngrams, sublinear_tf=True)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=config.char_ngrams, sublinear_tf=True)),
        ]
    )
    regression = LogisticRegression(C=config.C, class_weight=config.class_weight, max_iter=config.max_iter)
    return Pipeline([("features", features), ("classifier", regression)])


def fit(
    texts: Sequence[str], labels: Sequence[str], config: TrainConfig | None = None, *, source: str = ""
) -> TrainedModel:
    """Train on ``texts``/``labels`` (at least two distinct labels). Deterministic for equal inputs."""
    import warnings

    import sklearn
    import skops
    from sklearn.exceptions import ConvergenceWarning

    config = config or TrainConfig()
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    counts = Counter(labels)
    if len(counts) < 2:
        raise ValueError(f"need at least two distinct labels to train, got {sorted(counts)}")
    started = time.perf_counter()
    pipeline = build_pipeline(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline.fit(list(texts), list(labels))
    metadata = ModelMetadata(
        labels=[str(c) for c in pipeline.classes_],
        label_counts=dict(sorted(counts.items())),
        n_examples=len(texts),
        training_sha256=training_digest(texts, labels),
        config=config,
        source=source,
        sklearn_version=sklearn.__version__,
        skops_version=skops.__version__,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        train_seconds=round(time.perf_counter() - started, 3),
    )
    return TrainedModel(pipeline, metadata)


def save(model: TrainedModel, path: str | Path) -> Path:
    """Write ``model`` to ``path`` with skops, atomically (a reader never sees half a file)."""
    import skops.io as sio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "metadata": model.metadata.model_dump_json(), "pipeline": model.pipeline}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        sio.dump(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


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


def load(path: str | Path, *, expected_labels: Sequence[str] | None = None) -> TrainedModel:
    """Read a model written by :func:`save`. Raises :class:`ConfigError` naming ``path``."""
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
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "pipeline" not in payload:
        raise ConfigError(f"not a triagegate classifier (expected format {FORMAT!r})", file=where)
    try:
        metadata = ModelMetadata.model_validate_json(payload["metadata"])
    except (ValidationError, TypeError) as exc:
        raise ConfigError(f"the model's metadata is invalid: {exc}", file=where) from None
    pipeline = payload["pipeline"]
    classes = [str(c) for c in getattr(pipeline, "classes_", [])]
    if not hasattr(pipeline, "predict_proba") or classes != metadata.labels:
        raise ConfigError("the stored estimator does not match its metadata (labels differ)", file=where)
    if expected_labels is not None:
        problem = label_mismatch(metadata.labels, expected_labels)
        if problem:
            raise ConfigError(f"the model's labels differ from the graph's taxonomy: {problem}", file=where)
    return TrainedModel(pipeline, metadata)
