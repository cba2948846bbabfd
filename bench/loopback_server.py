"""The loopback OpenAI-compatible server, as its own process, with what benchmarks need on top.

It is ``tests/support/openai_server.py`` with two additions:

* a ticket whose text contains :data:`HARD_MARKER` gets option-code confidence
  :data:`HARD_CONFIDENCE` (below the loopback graph's 0.7 threshold, so it escalates: two
  model calls); any other ticket gets :data:`EASY_CONFIDENCE` and stays with the mini tier
  (one call). Routing is therefore a function of the request body alone, identical for
  every client that sends the ticket text in a user message.
* ``--answer-words N`` makes the text fields of auto replies N words long (a realistic
  answer length, where the default is two words);
* ``GET /bench/counts`` returns ``{"models": {model: requests}}``, the chat requests received
  per model so far (so a bench can check which tiers a ticket reached);
* ``POST /bench/arm`` makes the server note the wall-clock arrival time (``time.time()``)
  of the next chat request, and ``GET /bench/first`` returns it as ``{"first": t | null}``,
  so start-up can be timed from process start to first model request.

Run::

    python bench/loopback_server.py --port 0 [--ttft MODEL=SECONDS ...] [--per-token MODEL=SECONDS ...]

prints ``READY http://127.0.0.1:PORT/v1`` and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
openai_server: Any = importlib.import_module("tests.support.openai_server")

HARD_MARKER = "[needs-review]"
HARD_CONFIDENCE = 0.3
EASY_CONFIDENCE = 0.95


def confidence_for(body: dict[str, Any]) -> float:
    """Option-code confidence: low when any user message carries :data:`HARD_MARKER`."""
    for message in body.get("messages") or ():
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str) and HARD_MARKER in content:
                return HARD_CONFIDENCE
    return EASY_CONFIDENCE


class BenchServer(openai_server.OpenAIServer):  # type: ignore[misc]
    """Adds arrival stamping of the next chat request after ``arm``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(code_confidence=confidence_for, record=False, **kwargs)
        self.armed = False
        self.first_arrival: float | None = None

    async def _handle(self, scope: Any, receive: Any, send: Any) -> None:
        if self.armed:
            self.first_arrival = time.time()
            self.armed = False
        await super()._handle(scope, receive, send)


class _BenchApp(openai_server._App):  # type: ignore[misc]
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path == "/bench/arm" and scope["method"] == "POST":
            self.server.armed = True
            self.server.first_arrival = None
            await openai_server._send_json(send, 200, {"armed": True})
        elif scope["type"] == "http" and path == "/bench/first" and scope["method"] == "GET":
            await openai_server._send_json(send, 200, {"first": self.server.first_arrival})
        elif scope["type"] == "http" and path == "/bench/counts" and scope["method"] == "GET":
            await openai_server._send_json(send, 200, {"models": dict(self.server.model_counts)})
        else:
            await super().__call__(scope, receive, send)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--ttft", action="append", default=[], metavar="[MODEL=]SECONDS")
    parser.add_argument("--per-token", action="append", default=[], metavar="[MODEL=]SECONDS")
    parser.add_argument(
        "--answer-words",
        type=int,
        default=0,
        help="auto replies' text fields: this many words (0: the default)",
    )
    args = parser.parse_args(argv)
    if args.answer_words > 0:
        openai_server.AUTO_TEXT = " ".join(["word"] * args.answer_words)
    openai_server._App = _BenchApp
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    timing = openai_server._timing(args.ttft, args.per_token)
    with BenchServer(host=args.host, port=args.port, latency=args.latency, timing=timing) as server:
        print(f"READY {server.base_url}", flush=True)
        stop.wait()
    print(f"served {server.count} requests: {dict(server.status_counts)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
