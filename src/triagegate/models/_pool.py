"""A connection pool split into small shards, for many requests in flight to one endpoint.

httpcore's pool rescans every connection for every queued request whenever a request
starts or ends, so its CPU cost per request grows with the number in flight. Batches run
64 and more tickets at once; spreading them over shards of a few connections each keeps
each scan short (measured in ``bench/bench_batch.py --pool-diagnosis``: CPU per ticket at
concurrency 64 fell from about 4 ms to 2.4 ms).
"""

from __future__ import annotations

import os

import httpx

SHARD_SIZE = 8
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


class ShardedTransport(httpx.AsyncBaseTransport):
    """Send each request through the least busy of several small pools."""

    def __init__(self, connections: int, shard_size: int = SHARD_SIZE) -> None:
        shards = max(1, -(-connections // shard_size))
        size = -(-connections // shards)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        # One TLS context for all shards: each builds its own otherwise, about 0.1 s of CPU
        # apiece (loading the CA bundle), so a first request paid over a second for 13 shards.
        ssl_context = httpx.create_ssl_context()
        self._pools = [httpx.AsyncHTTPTransport(verify=ssl_context, limits=limits) for _ in range(shards)]
        self._busy = [0] * shards

    @property
    def shards(self) -> int:
        return len(self._pools)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(range(len(self._pools)), key=self._busy.__getitem__)
        self._busy[index] += 1
        try:
            response = await self._pools[index].handle_async_request(request)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                await response.aread()  # a stream is read by its caller as it arrives
            return response
        finally:
            self._busy[index] -= 1

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


def transport_for(connections: int) -> httpx.AsyncBaseTransport | None:
    """A sharded transport for large pools; ``None`` (httpx's own) for small ones or behind a proxy,
    since a custom transport would bypass httpx's proxy settings from the environment."""
    if connections <= 2 * SHARD_SIZE or any(os.environ.get(v) for v in PROXY_VARIABLES):
        return None
    return ShardedTransport(connections)
