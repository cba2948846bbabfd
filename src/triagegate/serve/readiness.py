"""``GET /readyz``: is the graph loaded and can every model it uses be reached?

Embedded backends (classifier, llama.cpp, scripted, replay) are ready once the pipeline
is built. For ``openai`` bindings the probe is one cheap ``GET {base_url}/models`` with a
short timeout, sent with the binding's key when it has one: an endpoint that is down,
slow or rejects the key makes the service not ready, which is what a load balancer
needs to know before it sends traffic.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

import httpx
from pydantic import BaseModel

from triagegate.pipeline import Pipeline
from triagegate.spec import ModelBinding

REMOTE_BACKENDS = frozenset({"openai"})


class ModelCheck(BaseModel):
    ready: bool
    backend: str
    detail: str


class ReadyReport(BaseModel):
    status: str
    graph: str
    graph_hash: str
    models: dict[str, ModelCheck]


async def _probe(client: httpx.AsyncClient, binding: ModelBinding, environ: Mapping[str, str]) -> ModelCheck:
    """A binding with several ``endpoints`` is ready when one of them is (the balancer routes
    around the others); the detail names each endpoint that is not."""
    if not binding.endpoints:
        return await _probe_one(client, binding, binding.base_url, binding.api_key_env, environ)
    checks = await asyncio.gather(
        *(
            _probe_one(client, binding, e.base_url, e.api_key_env or binding.api_key_env, environ)
            for e in binding.endpoints
        )
    )
    down = [
        f"{e.base_url}: {c.detail}" for e, c in zip(binding.endpoints, checks, strict=True) if not c.ready
    ]
    ready = len(down) < len(checks)
    detail = f"{len(checks) - len(down)} of {len(checks)} endpoints ready" + (
        f" ({'; '.join(down)})" if down else ""
    )
    return ModelCheck(ready=ready, backend=binding.backend, detail=detail)


async def _probe_one(
    client: httpx.AsyncClient,
    binding: ModelBinding,
    base_url: str | None,
    api_key_env: str | None,
    environ: Mapping[str, str],
) -> ModelCheck:
    base = (base_url or "https://api.openai.com/v1").rstrip("/")
    headers = dict(binding.headers)
    if api_key_env and environ.get(api_key_env):
        headers["Authorization"] = f"Bearer {environ[api_key_env].strip()}"
    try:
        response = await client.get(f"{base}/models", headers=headers)
    except httpx.TimeoutException:
        return ModelCheck(ready=False, backend=binding.backend, detail="timed out")
    except httpx.HTTPError as exc:
        return ModelCheck(ready=False, backend=binding.backend, detail=f"unreachable: {type(exc).__name__}")
    if response.is_success:
        return ModelCheck(ready=True, backend=binding.backend, detail=f"HTTP {response.status_code}")
    return ModelCheck(ready=False, backend=binding.backend, detail=f"HTTP {response.status_code}")


async def check(pipeline: Pipeline, timeout: float, environ: Mapping[str, str] | None = None) -> ReadyReport:
    """Probe every alias the pipeline built (fallbacks included), concurrently."""
    env = os.environ if environ is None else environ
    models = pipeline.spec.models
    aliases = set(pipeline.backends)
    for alias in list(aliases):
        aliases.update(models[alias].fallbacks)
    results: dict[str, ModelCheck] = {}
    remote = sorted(a for a in aliases if models[a].backend in REMOTE_BACKENDS)
    for alias in sorted(aliases - set(remote)):
        results[alias] = ModelCheck(ready=True, backend=models[alias].backend, detail="embedded")
    if remote:
        async with httpx.AsyncClient(timeout=httpx.Timeout(timeout)) as client:
            checks = await asyncio.gather(*(_probe(client, models[a], env) for a in remote))
        results.update(zip(remote, checks, strict=True))
    ready = all(c.ready for c in results.values())
    return ReadyReport(
        status="ready" if ready else "not_ready",
        graph=pipeline.name,
        graph_hash=pipeline.graph_hash,
        models=dict(sorted(results.items())),
    )
