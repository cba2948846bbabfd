"""The linear softmax both classifier kinds serve, and its fast path for one text.

Each kind's model collapses into ``probabilities = softmax(W @ features(text) + b)``: the
TF-IDF classifier's features are its vectorisers' blocks, the encoder classifier's are the
sentence embedding beside the same blocks. What is here runs at prediction time, so the
runtime artifacts (:mod:`triagegate.tuning.training`'s TF-IDF model and
:mod:`triagegate.models.encoder_classifier`) share it without importing the training code.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

Probabilities = npt.NDArray[np.float64]
Matrix = npt.NDArray[np.float64]


def softmax_rows(z: Matrix) -> Probabilities:
    """Row-wise probabilities from logits; one logit column means a binary model (sigmoid)."""
    if z.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-z[:, 0]))
        return np.column_stack([1.0 - p, p])
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: Probabilities = e / e.sum(axis=1, keepdims=True)
    return out


class LinearTextScorer:
    """Probabilities for one text straight from the fitted vectorisers and the collapsed weights.

    Mirrors :meth:`triagegate.tuning.training.TrainedModel.predict_proba` (analyse, sublinear tf times idf,
    l2-normalise each vectoriser's block, dot with the weights, softmax) without building
    sparse matrices or validating inputs. Built only for the configuration
    :func:`triagegate.tuning.training.fit` produces.
    """

    def __init__(self, features: Any, coef: Matrix, intercept: Matrix) -> None:
        self.blocks: list[tuple[Callable[[str], list[str]], dict[str, int], Probabilities, int]] = []
        offset = 0
        for _, vectorizer in features.transformer_list:
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
        self.weights: Matrix = np.ascontiguousarray(coef.T, dtype=np.float64)
        self.bias: Matrix = np.asarray(intercept, dtype=np.float64)
        if self.weights.shape[0] != offset:
            raise ValueError("feature count does not match the weights")

    def logits(self, text: str) -> Matrix:
        """``W @ tfidf(text) + b`` for one text (one value per row of the weights)."""
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
        return z

    def __call__(self, text: str) -> Probabilities:
        z = self.logits(text)
        if z.shape[0] == 1:
            p = 1.0 / (1.0 + math.exp(-float(z[0])))
            return np.array([1.0 - p, p])
        z -= z.max()
        e = np.exp(z)
        out: Probabilities = e / e.sum()
        return out


def feature_count(features: Any) -> int | None:
    try:
        return sum(len(v.vocabulary_) for _, v in features.transformer_list)
    except (AttributeError, TypeError):
        return None
