"""Model backends: one module per backend behind the protocol in :mod:`triagegate.models.base`.

Backends are looked up by the ``backend:`` name in a graph file and imported lazily, so a
graph that only uses the hosted API never imports scikit-learn or llama.cpp.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from triagegate.errors import ConfigError
from triagegate.models.base import (
    Capabilities,
    ChatRequest,
    ChatResult,
    Classification,
    ClassifyRequest,
    ImagePart,
    JsonSchema,
    Message,
    ModelBackend,
    TokenLogprob,
)

if TYPE_CHECKING:
    from triagegate.spec import LoadedSpec, ModelBinding

__all__ = [
    "BACKENDS",
    "BuildContext",
    "Capabilities",
    "ChatRequest",
    "ChatResult",
    "Classification",
    "ClassifyRequest",
    "ImagePart",
    "JsonSchema",
    "Message",
    "ModelBackend",
    "TokenLogprob",
    "build_backend",
    "build_backends",
]

BACKENDS: dict[str, str] = {
    "openai": "triagegate.models.openai:OpenAIBackend",
    "classifier": "triagegate.models.classifier:ClassifierBackend",
    "llamacpp": "triagegate.models.llamacpp:LlamaCppBackend",
    "replay": "triagegate.models.replay:ReplayBackend",
    "scripted": "triagegate.models.scripted:ScriptedBackend",
}


@dataclass
class BuildContext:
    """What a backend may need beyond its own binding: the whole graph, the environment, a cache."""

    loaded: LoadedSpec
    environ: Mapping[str, str]
    cache_dir: Path
    extras: dict[str, Any] = field(default_factory=dict)
    """Objects injected by the embedding application, keyed by name (e.g. scripted handlers, httpx transports)."""
    backends: dict[str, ModelBackend] = field(default_factory=dict)
    """Backends already built, by alias (a classifier's drafting model, for instance)."""


class BackendFactory(Protocol):
    @classmethod
    def from_binding(cls, alias: str, binding: ModelBinding, context: BuildContext) -> ModelBackend: ...


def backend_class(name: str) -> BackendFactory:
    target = BACKENDS.get(name)
    if target is None:
        raise ConfigError(f"unknown backend {name!r}; available: {', '.join(sorted(BACKENDS))}")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = {
            "llamacpp": " Install the embedded model with: pip install 'triagegate[local]'",
        }.get(name, "")
        raise ConfigError(f"backend {name!r} is not available: {exc}.{hint}") from None
    cls: BackendFactory = getattr(module, attr)
    return cls


def build_backend(alias: str, binding: ModelBinding, context: BuildContext) -> ModelBackend:
    """Build one alias's backend, wrapped in its fallback chain when it lists fallbacks."""
    try:
        primary = backend_class(binding.backend).from_binding(alias, binding, context)
    except ConfigError as exc:
        raise ConfigError(
            exc.reason, file=exc.file, line=exc.line, key=exc.key or f"models.{alias}"
        ) from None
    if not binding.fallbacks:
        return primary
    from triagegate.models.fallback import FallbackChain

    chain = [primary]
    models = context.loaded.spec.models
    for fb in binding.fallbacks:
        chain.append(backend_class(models[fb].backend).from_binding(fb, models[fb], context))
    return FallbackChain(alias, chain)


def build_backends(context: BuildContext, aliases: list[str] | None = None) -> dict[str, ModelBackend]:
    """Build the backends for ``aliases`` (in order, so later ones may use earlier ones).

    Without ``aliases``, every alias the graph's cascade calls: each tier's model and each
    tier's ``draft`` model (:meth:`~triagegate.spec.GraphSpec.aliases`). A fallback is built
    inside the chain of the alias that lists it, not as an alias of its own.
    """
    models = context.loaded.spec.models
    for alias in context.loaded.spec.aliases() if aliases is None else aliases:
        if alias not in context.backends:
            context.backends[alias] = build_backend(alias, models[alias], context)
    return context.backends
