"""``triagegate run`` and ``triagegate graph``: exit codes, one-line errors, Mermaid output."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

import triagegate
from triagegate.cli import main
from triagegate.errors import ModelUnavailable
from triagegate.models.base import ChatRequest
from triagegate.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[2]
SCRIPTED = REPO / "tests" / "graphs" / "scripted.yaml"
PROMPTS = REPO / "prompts"
CONSOLE_SCRIPT = Path(sys.executable).parent / "triagegate"


@pytest.fixture(autouse=True)
def restore_structlog() -> Iterator[None]:
    """``run`` configures logging to the (captured) stderr; put the previous configuration back."""
    saved = structlog.get_config()
    saved["processors"] = list(saved["processors"])
    yield
    structlog.configure(**saved)


def graph_file(tmp_path: Path, old: str = "", new: str = "") -> tuple[Path, str]:
    """A copy of the scripted test graph (prompts by absolute path), with ``old`` replaced by ``new``."""
    text = SCRIPTED.read_text(encoding="utf-8").replace("prompts: ../../prompts", f"prompts: {PROMPTS}")
    if old:
        assert old in text
        text = text.replace(old, new, 1)
    path = tmp_path / "graph.yaml"
    path.write_text(text, encoding="utf-8")
    return path, text


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), start=1) if needle in line)


def triage_reply(confidence: float) -> str:
    reply = {
        "category": "A",
        "priority": "normal",
        "complexity": "low",
        "needs_vision": False,
        "answer": "We will refund the duplicate charge.",
        "confidence": confidence,
    }
    return json.dumps(reply)


def use_scripted_load(monkeypatch: pytest.MonkeyPatch, mini: Any, flagship: Any) -> None:
    """Make ``run`` build its pipeline with scripted handlers (the CLI has no way to pass them)."""
    real_load = triagegate.pipeline.load

    def load(path: Any, **_kwargs: Any) -> Pipeline:
        return real_load(
            path, environ={}, extras={"scripted": {"mini": {"chat": mini}, "flagship": {"chat": flagship}}}
        )

    monkeypatch.setattr("triagegate.pipeline.load", load)


def test_console_script_help_lists_commands() -> None:
    done = subprocess.run(
        [str(CONSOLE_SCRIPT), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "run" in done.stdout
    assert "graph" in done.stdout


def test_console_script_prints_the_installed_version() -> None:
    from importlib.metadata import version

    done = subprocess.run(
        [str(CONSOLE_SCRIPT), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"triagegate {version('triagegate')}\n"
    assert done.stderr == ""


def test_graph_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "--help"]) == 0
    out = capsys.readouterr().out
    assert "check" in out
    assert "show" in out


def test_graph_check_accepts_a_valid_graph(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path, _ = graph_file(tmp_path)
    assert main(["graph", "check", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"ok: {path} (scripted): 4 categories, tiers mini -> flagship"
    assert "  mini: scripted mini-model" in out
    assert "  flagship: scripted flagship-model" in out
    assert "  confidence: triage model mini: verbalized (the model's stated confidence)" in out


MINI_PRICE = "price: {input: 1.0, output: 2.0}"
MINI_WITH_LOGPROBS = MINI_PRICE + "\n    capabilities: {logprobs: true}"
PROMISES_LOGPROBS = "  confidence: triage model mini: logprobs; a reply without usable log-probabilities "


@pytest.mark.parametrize(
    ("edits", "line"),
    [
        (
            [(MINI_PRICE, MINI_WITH_LOGPROBS)],
            PROMISES_LOGPROBS + "escalates (gate.on_missing_logprobs: escalate)",
        ),
        (
            [
                (MINI_PRICE, MINI_WITH_LOGPROBS),
                ("threshold: 0.7", "threshold: 0.7\n  on_missing_logprobs: verbalized"),
            ],
            PROMISES_LOGPROBS + "keeps the model's stated confidence (gate.on_missing_logprobs: verbalized)",
        ),
        (
            [(MINI_PRICE, MINI_WITH_LOGPROBS + "\n    fallbacks: [flagship]")],
            "  confidence: triage model mini: verbalized (logprobs declared, but fallback flagship has none)",
        ),
        (
            [("  mini:\n    backend: scripted\n", "  mini:\n    backend: llamacpp\n")],
            PROMISES_LOGPROBS + "escalates (gate.on_missing_logprobs: escalate)",
        ),
    ],
)
def test_graph_check_says_which_confidence_the_triage_binding_gives(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, edits: list[tuple[str, str]], line: str
) -> None:
    path, text = graph_file(tmp_path)
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1)
    path.write_text(text, encoding="utf-8")
    assert main(["graph", "check", str(path)]) == 0
    assert line in capsys.readouterr().out.splitlines()


def test_graph_check_says_when_the_taxonomy_is_too_large_for_logprobs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    many = "\n".join(f"    - {{name: extra{i}}}" for i in range(50))
    path, _ = graph_file(
        tmp_path,
        "    - {name: billing, description: charges and invoices}",
        "    - {name: billing, description: charges and invoices}\n" + many,
    )
    path.write_text(
        path.read_text(encoding="utf-8").replace(MINI_PRICE, MINI_WITH_LOGPROBS), encoding="utf-8"
    )
    assert main(["graph", "check", str(path)]) == 0
    assert (
        "  confidence: triage model mini: verbalized (logprobs declared, but 54 categories exceed the 52 "
        "one-token option codes)"
    ) in capsys.readouterr().out.splitlines()


def test_graph_check_on_a_broken_graph_prints_one_line_with_file_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path, text = graph_file(tmp_path, "threshold: 0.7", "treshold: 0.7")
    assert main(["graph", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {path}:{line_of(text, 'treshold')} [gate.treshold]: unknown key")


def test_graph_check_reports_a_bad_prompt_by_file_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for name in ("triage.md", "answer.md", "escalate.md"):
        (prompts / name).write_text((PROMPTS / name).read_text(encoding="utf-8"), encoding="utf-8")
    (prompts / "answer.md").write_text(
        "Be nice.\nHello {{customer}}\n<!-- user -->\n{{ticket}}\n", encoding="utf-8"
    )
    path, _ = graph_file(tmp_path, f"prompts: {PROMPTS}", "prompts: prompts")
    assert main(["graph", "check", str(path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {prompts / 'answer.md'}:2 [customer]:")


def test_graph_check_refuses_a_filter_in_a_prompt(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for name in ("triage.md", "answer.md", "escalate.md"):
        (prompts / name).write_text((PROMPTS / name).read_text(encoding="utf-8"), encoding="utf-8")
    (prompts / "answer.md").write_text(
        "Be nice.\n<!-- user -->\n{{ ticket | upper }}\n{{ticket}}\n", encoding="utf-8"
    )
    path, _ = graph_file(tmp_path, f"prompts: {PROMPTS}", "prompts: prompts")
    assert main(["graph", "check", str(path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        f"error: {prompts / 'answer.md'}:3: unsupported placeholder '{{{{ ticket | upper }}}}'"
    )
    assert "templates support only {{ name }}" in line


def test_graph_show_prints_mermaid(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path, _ = graph_file(tmp_path)
    assert main(["graph", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\ngraph TD;\n" in out, "LangGraph's own drawing of the compiled graph"
    assert "\tmini(mini<hr/><small><em>model = mini\nthreshold = 0.7</em></small>)" in out
    assert "\tflagship(flagship<hr/><small><em>model = flagship</em></small>)" in out
    assert "mini -. &nbsp;escalate&nbsp; .-> flagship;" in out
    assert "mini -. &nbsp;keep&nbsp; .-> __end__;" in out


def test_graph_show_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path, _ = graph_file(tmp_path)
    assert main(["graph", "show", str(path), "--format", "json"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["name"] == "scripted"
    assert spec["tiers"][0]["gate"]["never_escalate"]["categories"] == ["feedback"]


def test_run_with_a_missing_graph_file_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "absent.yaml"
    assert main(["run", str(missing), "I was charged twice"]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"error: {missing}: graph file not found"]
    assert captured.out == ""


def test_run_prints_the_outcome_as_json(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_scripted_load(monkeypatch, lambda _r: triage_reply(0.95), lambda _r: "unused")
    assert main(["run", str(SCRIPTED), "I was charged twice", "--id", "cli-1", "--json"]) == 0
    outcome = json.loads(capsys.readouterr().out)
    assert (outcome["ticket_id"], outcome["status"], outcome["route"]) == ("cli-1", "ok", "mini")
    assert outcome["answer"] == "We will refund the duplicate charge."


def test_run_prints_a_readable_summary(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_scripted_load(monkeypatch, lambda _r: triage_reply(0.95), lambda _r: "unused")
    assert main(["run", str(SCRIPTED), "I was charged twice"]) == 0
    out = capsys.readouterr().out
    assert "mini (the tier that answered)" in out
    assert "(confidence 0.950 >= threshold 0.7)" in out
    assert "We will refund the duplicate charge." in out


def _unavailable(_request: ChatRequest) -> str:
    raise ModelUnavailable("flagship endpoint answered 503")


def test_run_exits_1_when_the_ticket_fails(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_scripted_load(monkeypatch, lambda _r: triage_reply(0.1), _unavailable)
    assert main(["run", str(SCRIPTED), "I was charged twice", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["status"] == "failed"


@pytest.mark.parametrize(
    "argv",
    [["run", "--bogus"], ["run"], ["graph", "show", str(SCRIPTED), "--format", "dot"]],
)
def test_usage_errors_exit_2_without_a_traceback(argv: list[str]) -> None:
    done = subprocess.run(
        [str(CONSOLE_SCRIPT), *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip()
