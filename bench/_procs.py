"""Helpers shared by the service and worker benches: child processes that announce READY."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
CLI = str(Path(sys.executable).with_name("triagegate"))
LOOPBACK = REPO / "tests" / "graphs" / "loopback_openai.yaml"


class Child:
    """A child process whose first stdout line is ``READY <value>``."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> None:
        self.args = args
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()
        if not line.startswith("READY ") or time.monotonic() > deadline:
            self.proc.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"{args[:3]} did not start: {line!r} {err[-2000:]}")
        self.ready = line.split(maxsplit=1)[1].strip()

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def openai_server(latency: float) -> Child:
    return Child(
        [
            sys.executable,
            str(REPO / "tests" / "support" / "openai_server.py"),
            "--port",
            "0",
            "--latency",
            str(latency),
        ]
    )


def machine() -> dict[str, Any]:
    import os

    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


def write_json(name: str, payload: dict[str, Any]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
