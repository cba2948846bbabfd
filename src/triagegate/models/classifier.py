"""A trained text classifier as the triage tier: offline, free, milliseconds per ticket.

Bind it in a graph file with exactly one of these options::

    mini:
      backend: classifier
      options:
        model_path: models/support.skops     # a file written by ``triagegate train``
        # or
        train_from: taxonomy                 # the taxonomy's examples in this graph file
        # or
        train_from: data/tickets.csv         # a labeled CSV/JSONL file (text_col/label_col optional)
        kind: encoder                        # or tfidf; optional, see below
        training: {embedding_weight: 2.0}    # optional overrides of the kind's training config

Two kinds of classifier exist (``kind``, for ``train_from``; a ``model_path`` file says its own):

* ``encoder`` (model name ``minilm-l6-hybrid``): a pretrained sentence encoder
  (all-MiniLM-L6-v2, run offline by :mod:`triagegate.models.encoder`) plus TF-IDF features
  under one calibrated linear softmax (:mod:`triagegate.models.encoder_classifier`). It is the
  default wherever the ``encoder`` extra is installed: it needs ten examples an intent where
  TF-IDF needs hundreds. Asking for it without the extra is a :class:`ConfigError` naming it.
* ``tfidf`` (``tfidf-linear``): word and character n-gram TF-IDF under a linear softmax
  (:mod:`triagegate.tuning.training`); sub-millisecond, the default without the extra.
  ``training`` then overrides :class:`~triagegate.tuning.training.TrainConfig`.

The backend's ``model`` (and so the Outcome's triage node ``model``) is the name of the kind
that runs, whatever the binding's ``model`` says.

``model_path`` is loaded while the pipeline is built, so a missing or corrupt file, one
whose labels differ from the taxonomy, or one trained with another encoder than the
installed one, fails at once with a :class:`ConfigError` naming it.
With ``train_from`` the data is read and checked at build time too, but fitting waits for
the first ``classify`` call (so building a pipeline stays quick) and happens once per
process, whatever the concurrency: later calls reuse the model. The fitted model is cached
under ``<cache_dir>/classifiers/<key>.skops``, keyed by the training data, the kind, the
config, the scikit-learn version and the encoder's weights, so another process or a restart
loads it instead of retraining. A failure to fit or load is not remembered: the next call
tries again (a transient error does not disable the classifier for the life of the process).

The backend only classifies; ``chat`` raises :class:`UnsupportedOperation` and the graph's
``answer`` node drafts replies with its own model.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from triagegate.errors import ConfigError, ModelUnavailable, UnsupportedOperation
from triagegate.log import get_logger
from triagegate.models import BuildContext
from triagegate.models.base import Capabilities, ChatRequest, ChatResult, Classification, ClassifyRequest
from triagegate.spec import ModelBinding, Taxonomy
from triagegate.tuning import training
from triagegate.types import Usage

log = get_logger("triagegate.models")

OPTIONS = ("model_path", "train_from", "text_col", "label_col", "training", "kind")
ModelSource = Literal["file", "cache", "trained", "given"]


def taxonomy_examples(taxonomy: Taxonomy) -> tuple[list[str], list[str]]:
    """``(texts, labels)`` from the taxonomy's examples; every category must have at least one."""
    empty = [c.name for c in taxonomy.categories if not c.examples]
    if empty:
        raise ConfigError(
            f"train_from: taxonomy needs examples for every category; none for: {', '.join(empty)}"
        )
    texts = [e.text for c in taxonomy.categories for e in c.examples]
    labels = [c.name for c in taxonomy.categories for _ in c.examples]
    return texts, labels


class ClassifierBackend:
    """Serves :meth:`classify` from a fitted classifier of either kind, fitted lazily if needed."""

    def __init__(
        self,
        alias: str,
        binding: ModelBinding,
        *,
        model: training.Classifier | None = None,
        obtain: Callable[[], tuple[training.Classifier, ModelSource]] | None = None,
        model_name: str | None = None,
    ) -> None:
        if (model is None) == (obtain is None):
            raise ValueError("give exactly one of 'model' or 'obtain'")
        self.alias = alias
        self.binding = binding
        self.name = f"{alias}@classifier"
        # The name of the classifier that runs, not the binding's label: the Outcome must say which.
        self.model = model.name if model is not None else model_name or training.TFIDF_NAME
        self.capabilities = Capabilities(
            chat=False, classify=True, vision=False, logprobs=False, json_schema=False
        )
        self._model = model
        self._obtain = obtain
        self._lock = threading.Lock()
        self.source: ModelSource | None = "given" if model is not None else None
        """Where the model came from once ready: a ``model_path`` file, the cache, a fresh fit, or the caller."""

    @classmethod
    def from_binding(cls, alias: str, binding: ModelBinding, context: BuildContext) -> ClassifierBackend:
        """Validate the options; load ``model_path`` now, prepare ``train_from`` to fit on first use."""
        options = binding.options
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ConfigError(
                f"unknown option(s) for the classifier backend: {', '.join(unknown)}; known: {', '.join(OPTIONS)}",
                key=f"models.{alias}.options",
            )
        has_path, has_train = options.get("model_path") is not None, options.get("train_from") is not None
        if has_path == has_train:
            raise ConfigError(
                "the classifier backend needs exactly one of options.model_path (a file from 'triagegate train') "
                "or options.train_from ('taxonomy' or a labeled data file)",
                key=f"models.{alias}.options",
            )
        loaded = context.loaded
        base = loaded.path.parent if loaded.path is not None else Path.cwd()
        categories = loaded.spec.taxonomy.category_names
        if has_path:
            path = _resolve(base, options["model_path"], f"models.{alias}.options.model_path")
            model = training.load(path, expected_labels=categories)
            wanted = options.get("kind")
            if wanted is not None and wanted != model.kind:
                raise ConfigError(
                    f"options.kind is {wanted!r} but {path} holds a {model.kind!r} classifier; "
                    "drop 'kind' (a model file says its own) or train the file again",
                    key=f"models.{alias}.options.kind",
                )
            backend = cls(alias, binding, model=model)
            backend.source = "file"
            return backend

        try:
            kind = training.resolve_kind(options.get("kind"))
        except ConfigError as exc:
            raise ConfigError(exc.reason, key=f"models.{alias}.options.kind") from None
        try:
            config = training.config_for(kind, options.get("training") or {})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{where}: {first['msg']}", key=f"models.{alias}.options.training") from None
        except TypeError:
            raise ConfigError(
                "must be a mapping of training settings", key=f"models.{alias}.options.training"
            ) from None
        source = options["train_from"]
        if source == "taxonomy":
            try:
                texts, labels = taxonomy_examples(loaded.spec.taxonomy)
            except ConfigError as exc:
                raise ConfigError(exc.reason, key=f"models.{alias}.options.train_from") from None
            described = "taxonomy"
        else:
            from triagegate.tuning.datasets import DatasetError, load_labeled

            data = _resolve(base, source, f"models.{alias}.options.train_from")
            try:
                rows = load_labeled(
                    data, text_col=options.get("text_col"), label_col=options.get("label_col")
                )
            except DatasetError as exc:
                raise ConfigError(exc.reason, file=exc.file, line=exc.line) from None
            texts, labels = [r.text for r in rows], [r.label for r in rows]
            problem = training.label_mismatch(sorted(set(labels)), categories)
            if problem:
                raise ConfigError(
                    f"the data's labels differ from the graph's taxonomy: {problem}",
                    file=str(data),
                    key=f"models.{alias}.options.train_from",
                )
            described = data.name
        digest = training.training_digest(texts, labels)
        cache_file = context.cache_dir / "classifiers" / f"{training.cache_key(digest, config)}.skops"

        def obtain() -> tuple[training.Classifier, ModelSource]:
            if cache_file.is_file():
                try:
                    cached = training.load(cache_file, expected_labels=categories)
                    if cached.metadata.training_sha256 == digest and cached.kind == kind:
                        return cached, "cache"
                except ConfigError as exc:
                    log.warning("classifier_cache_unusable", file=str(cache_file), problem=exc.reason)
            model = training.fit(texts, labels, config, kind=kind, source=described)
            try:
                training.save(model, cache_file)
            except OSError as exc:
                log.warning("classifier_cache_not_written", file=str(cache_file), problem=str(exc))
            log.info(
                "classifier_trained",
                alias=alias,
                kind=kind,
                examples=len(texts),
                seconds=model.metadata.train_seconds,
            )
            return model, "trained"

        return cls(alias, binding, obtain=obtain, model_name=training.model_name(kind))

    def ready_model(self) -> training.Classifier:
        """The model, loading or fitting it on first use (thread-safe). Blocks while fitting.

        A failure raises :class:`ModelUnavailable` for this call only: it is not cached, so the
        next call tries again (issue 18: a transient error, say a full disk or a busy file,
        must not disable the classifier until the process restarts). Concurrent callers wait
        on one attempt at a time instead of fitting side by side.
        """
        model = self._model
        if model is not None:
            return model
        with self._lock:
            if self._model is None:
                assert self._obtain is not None
                try:
                    self._model, self.source = self._obtain()
                except Exception as exc:
                    reason = f"{self.name}: training the classifier failed: {type(exc).__name__}: {exc}"
                    log.warning("classifier_unavailable", alias=self.alias, problem=reason)
                    raise ModelUnavailable(reason, model=self.model) from exc
            return self._model

    async def _model_async(self) -> training.Classifier:
        model = self._model
        return model if model is not None else await asyncio.to_thread(self.ready_model)

    def _restrict(self, labels: tuple[str, ...], wanted: tuple[str, ...]) -> list[int] | None:
        if not wanted or set(wanted) == set(labels):
            return None
        unknown = sorted(set(wanted) - set(labels))
        if unknown:
            raise UnsupportedOperation(
                f"{self.name} was not trained on label(s) {', '.join(unknown)}", model=self.model
            )
        return [labels.index(w) for w in wanted]

    async def classify(self, request: ClassifyRequest) -> Classification:
        model = await self._model_async()
        started = time.perf_counter()
        keep = self._restrict(model.labels, request.labels)
        probs = model.predict_one(request.text)
        labels = model.labels
        if keep is not None:
            subset = probs[keep]
            total = float(subset.sum())
            probs = subset / total if total > 0 else subset
            labels = tuple(model.labels[i] for i in keep)
        return Classification(
            probabilities={label: float(p) for label, p in zip(labels, probs, strict=True)},
            model=self.model,
            endpoint=self.name,
            usage=Usage(requests=1),
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    async def classify_many(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """Probabilities for many texts in one vectorised call (for evaluation and batch scoring)."""
        model = await self._model_async()
        matrix = model.predict_proba(texts)
        return [dict(zip(model.labels, map(float, row), strict=True)) for row in matrix]

    async def chat(self, request: ChatRequest) -> ChatResult:
        raise UnsupportedOperation(
            f"{self.name} is a classifier and cannot write text; the graph's 'answer' node drafts replies",
            model=self.model,
        )

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"ClassifierBackend(name={self.name!r}, model={self.model!r}, source={self.source!r})"


def _resolve(base: Path, value: object, key: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("must be a file path (relative to the graph file)", key=key)
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path
