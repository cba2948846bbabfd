"""triagegate: answer support tickets with a cheap model, escalate to a flagship only when needed.

The public API is what this module exports; nothing else is promised::

    import triagegate

    pipeline = triagegate.load("graphs/support.yaml")
    outcome = await pipeline.run("I was charged twice this month")

Heavy parts (LangGraph, model backends) are imported on first use so ``import triagegate``
stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from triagegate.errors import (
    BadModelOutput,
    ConfigError,
    HandoffError,
    HandoffNotFound,
    HandoffResolved,
    InputError,
    ModelError,
    ModelTimeout,
    ModelUnavailable,
    RateLimited,
    ReplayMiss,
    TriagegateError,
    UnsupportedOperation,
)
from triagegate.types import (
    Attachment,
    GateDecision,
    Handoff,
    HumanAnswer,
    NodeRun,
    Outcome,
    Ticket,
    Triage,
    Turn,
    Usage,
)

if TYPE_CHECKING:
    from triagegate.gate import Decision, decide
    from triagegate.pipeline import Pipeline, load
    from triagegate.spec import GatePolicy, GraphSpec, load_spec

__version__ = "0.1.0"

_LAZY = {
    "Pipeline": "triagegate.pipeline",
    "load": "triagegate.pipeline",
    "Decision": "triagegate.gate",
    "decide": "triagegate.gate",
    "GatePolicy": "triagegate.spec",
    "GraphSpec": "triagegate.spec",
    "load_spec": "triagegate.spec",
}

__all__ = [
    "Attachment",
    "BadModelOutput",
    "ConfigError",
    "Decision",
    "GateDecision",
    "GatePolicy",
    "GraphSpec",
    "Handoff",
    "HandoffError",
    "HandoffNotFound",
    "HandoffResolved",
    "HumanAnswer",
    "InputError",
    "ModelError",
    "ModelTimeout",
    "ModelUnavailable",
    "NodeRun",
    "Outcome",
    "Pipeline",
    "RateLimited",
    "ReplayMiss",
    "Ticket",
    "Triage",
    "TriagegateError",
    "Turn",
    "UnsupportedOperation",
    "Usage",
    "__version__",
    "decide",
    "load",
    "load_spec",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'triagegate' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
