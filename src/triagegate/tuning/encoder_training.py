"""Fit the encoder classifier (:mod:`triagegate.models.encoder_classifier`) and calibrate it out of fold.

Features are ``[embedding_weight * embedding, word TF-IDF, char TF-IDF]`` (see the model's
docstring). The head depends on how many examples a label has on average; either way its
probabilities are ``softmax(scores / T)`` with one *temperature* ``T`` fitted (by log-loss) on
out-of-fold scores, so a confidence of 0.9 means about 90% accurate on tickets the model has
not seen, and dividing every score by the same ``T`` never changes which label wins. The
division is folded into the weights.

* at least ``EncoderTrainConfig.cross_fit_mean_per_label`` (60, and ``folds`` of the rarest):
  linear SVMs cross-fitted on ``folds`` stratified folds (:func:`training.cross_fit_svm`, as
  the TF-IDF model), their average served; ``T`` is fitted on the fold SVMs' scores of the
  rows they did not see;
* fewer (the examples of a graph file, 10-shot data sets): one multinomial logistic
  regression on all rows, ``T`` fitted on out-of-fold logits of the same regression fitted on
  ``folds`` folds. Labels with a single example leave nothing to hold out: with fewer than
  two examples of some label the temperature stays 1.

Why (BANKING77, ``bench/RESULTS.md``, "Encoder classifier (issue 12)"): with 10, 20 and 35
examples per intent the cross-fitted SVMs' scores were poorly calibrated (expected
calibration error 0.25, 0.12, 0.06 under the TF-IDF model's logistic calibrator) while the
tempered regression's were within 1-3%, and it kept as many or more tickets at 97% accuracy;
with the full training file (130 an intent) the cross-fitted SVMs are more accurate and fit in
a fraction of the six regressions' time. On their out-of-fold scores (cross-validated, training
file only) a temperature beat the logistic calibrator (log-loss 0.277 against 0.303, accuracy
0.9285 against 0.9158): the calibrator, free to mix labels' scores, moved the argmax and lost
accuracy the temperature keeps.

Fitting embeds every text once (about 8 ms of CPU a short text); ``embeddings`` lets a caller
that already has them (the benchmark, cross-validation) pass them in.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from triagegate.models import encoder as enc
from triagegate.models.encoder_classifier import EncoderClassifier, EncoderModelMetadata, EncoderTrainConfig
from triagegate.tuning import training

Matrix = npt.NDArray[np.float64]


def build_text_features(config: EncoderTrainConfig) -> Any:
    """The unfitted TF-IDF union (word and ``char_wb`` n-grams), as the TF-IDF classifier builds it."""
    from triagegate.tuning.training import TrainConfig, build_features

    return build_features(TrainConfig(word_ngrams=config.word_ngrams, char_ngrams=config.char_ngrams))


def _stack(embedded: npt.NDArray[np.float32], text: Any, weight: float) -> Any:
    from scipy import sparse

    return sparse.hstack([sparse.csr_matrix(embedded.astype(np.float64) * weight), text]).tocsr()


def _log_softmax(z: Matrix) -> Matrix:
    z = z - z.max(axis=1, keepdims=True)
    out: Matrix = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return out


def fit_temperature(logits: Matrix, y: npt.NDArray[np.int64]) -> float:
    """The temperature ``T`` in [0.05, 20] minimising the log-loss of ``softmax(logits / T)``.

    Binary models (one logit column) are treated as ``[0, z]``. Golden-section search on
    ``log T``: the log-loss of a temperature-scaled softmax is unimodal in ``T``.
    """
    if logits.shape[1] == 1:
        logits = np.column_stack([np.zeros(len(logits)), logits[:, 0]])
    rows = np.arange(len(y))

    def loss(log_t: float) -> float:
        return float(-_log_softmax(logits / math.exp(log_t))[rows, y].mean())

    lo, hi = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return math.exp((lo + hi) / 2)


def _logistic(x: Any, y: npt.NDArray[np.int64], config: EncoderTrainConfig) -> tuple[Matrix, Matrix]:
    from sklearn.linear_model import LogisticRegression

    # Newton-CG reaches L-BFGS's optimum in 5 iterations against 20 here, 3x faster (scipy's L-BFGS-B
    # costs about 0.1 s an iteration on 10^5 parameters).
    model = LogisticRegression(C=config.logistic_C, max_iter=config.max_iter, solver="newton-cg").fit(x, y)
    return np.asarray(model.coef_, dtype=np.float64), np.asarray(model.intercept_, dtype=np.float64)


def fit(
    texts: Sequence[str],
    labels: Sequence[str],
    config: EncoderTrainConfig | None = None,
    *,
    source: str = "",
    embeddings: npt.NDArray[np.float32] | None = None,
) -> EncoderClassifier:
    """Train on ``texts``/``labels`` (at least two distinct labels). Deterministic for equal inputs.

    Raises :class:`~triagegate.errors.ConfigError` when the encoder is not installed and
    ``ValueError`` for unusable data.
    """
    import sklearn
    import skops
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold

    from triagegate.tuning.training import label_counts, training_digest

    config = config or EncoderTrainConfig()
    counts = label_counts(texts, labels)
    started = time.perf_counter()
    encoder = enc.load_encoder()
    names = sorted(counts)
    code = {name: i for i, name in enumerate(names)}
    y = np.fromiter((code[label] for label in labels), dtype=np.int64, count=len(labels))
    if embeddings is None:
        embeddings = encoder.embed(list(texts))
    elif embeddings.shape != (len(texts), enc.DIMENSION):
        raise ValueError(f"embeddings of shape {embeddings.shape} for {len(texts)} texts")
    features = build_text_features(config)
    x = _stack(embeddings, features.fit_transform(list(texts)), config.embedding_weight)
    smallest = min(counts.values())
    folds = min(config.folds, smallest)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=0) if folds >= 2 else None
    temperature, oof_accuracy = 1.0, None
    method: Literal["cross-fitted-svm", "logistic-temperature"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if (
            len(y) >= config.cross_fit_mean_per_label * len(names)
            and smallest >= config.folds
            and splitter is not None
        ):
            method = "cross-fitted-svm"
            crossed = training.cross_fit_svm(
                x, y, folds=config.folds, C=config.C, class_weight="balanced", max_iter=config.max_iter
            )
            oof_accuracy = crossed.accuracy(y)
            temperature = fit_temperature(crossed.scores, y)
            coef_all, intercept_all = crossed.coef / temperature, crossed.intercept / temperature
        else:
            method = "logistic-temperature"
            if splitter is not None:
                rows = 1 if len(names) == 2 else len(names)
                held_logits = np.zeros((len(y), rows))
                for train_rows, held_rows in splitter.split(np.zeros(len(y)), y):
                    coef, intercept = _logistic(x[train_rows], y[train_rows], config)
                    held_logits[held_rows] = x[held_rows] @ coef.T + intercept
                temperature = fit_temperature(held_logits, y)
                predicted = (held_logits[:, 0] > 0).astype(np.int64) if rows == 1 else held_logits.argmax(1)
                oof_accuracy = float(np.mean(predicted == y))
            coef_all, intercept_all = _logistic(x, y, config)
            coef_all, intercept_all = coef_all / temperature, intercept_all / temperature
    metadata = EncoderModelMetadata(
        labels=names,
        label_counts=dict(sorted(counts.items())),
        n_examples=len(texts),
        training_sha256=training_digest(texts, labels),
        config=config,
        method=method,
        temperature=round(temperature, 6),
        oof_accuracy=oof_accuracy,
        encoder=encoder.identity,
        source=source,
        sklearn_version=sklearn.__version__,
        skops_version=skops.__version__,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        train_seconds=round(time.perf_counter() - started, 3),
    )
    return EncoderClassifier(features, coef_all, intercept_all, metadata, encoder=encoder)
