"""``triagegate serve`` as its own process, for tests that need a real one (signals, restarts)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

CLI = str(Path(sys.executable).with_name("triagegate"))


class ServeProcess:
    """``triagegate serve GRAPH --port 0 ARGS`` with both tiers pointed at ``base_url``; ``url``
    is the address from its READY line. Extra environment variables come from ``env``; pass
    ``stderr=subprocess.DEVNULL`` when nothing reads its log, so a full pipe cannot block it."""

    def __init__(
        self,
        graph: Path,
        base_url: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        stderr: int = subprocess.PIPE,
    ) -> None:
        environ = {
            **os.environ,
            "TRIAGEGATE_MINI_BASE_URL": base_url,
            "TRIAGEGATE_FLAGSHIP_BASE_URL": base_url,
            "TRIAGEGATE_API_KEYS": "",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [CLI, "serve", str(graph), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=environ,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.proc.kill()
            raise AssertionError(
                f"no READY line: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}"
            )
        self.url = line.split()[1]

    def stop(self) -> None:
        """SIGKILL it (a no-op when it has exited) and wait for it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
