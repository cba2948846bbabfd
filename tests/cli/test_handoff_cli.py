"""``triagegate handoff list|show|resume|export`` against a real SQLite checkpoint file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import triagegate
from tests.support.openai_server import OpenAIServer
from triagegate.cli import main
from triagegate.tuning.datasets import load_labeled
from triagegate.types import Ticket

HANDOFF = Path(__file__).resolve().parents[1] / "graphs" / "handoff_openai.yaml"


@pytest.fixture
def paused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, OpenAIServer]]:
    """Two tickets handed off (every triage is unsure) on the checkpoint file the CLI will open."""
    with OpenAIServer(code_confidence=0.5) as server:
        env = {"TRIAGEGATE_MINI_BASE_URL": server.base_url, "TRIAGEGATE_FLAGSHIP_BASE_URL": server.base_url}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        checkpoints = tmp_path / "checkpoints.sqlite"

        async def pause() -> None:
            async with triagegate.load(HANDOFF, checkpoints=checkpoints) as pipeline:
                for i, text in enumerate(["My parcel never came.", "I was charged twice."]):
                    outcome = await pipeline.run(Ticket(id=f"U-{i}", text=text))
                    assert outcome.status == "awaiting_human"

        asyncio.run(pause())
        yield checkpoints, server


def test_list_show_resume_and_export_the_answers_as_labelled_data(
    paused: tuple[Path, OpenAIServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoints, server = paused
    where = ["--checkpoints", str(checkpoints)]
    assert main(["handoff", "list", str(HANDOFF), *where]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["U-0", "U-1"]
    assert all("handoff:low_confidence" in line for line in lines)

    assert main(["handoff", "show", str(HANDOFF), "U-0", *where, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "pending" and shown["outcome"]["handoff"]["draft"] == "auto answer"

    calls = server.count
    resumed = ["handoff", "resume", str(HANDOFF), "U-0", *where, "--json"]
    assert main([*resumed, "--edit", "It is on its way.", "--category", "shipping", "--by", "sam"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["route"] == "human" and done["category"] == "shipping" and done["handoff"]["by"] == "sam"
    assert main(["handoff", "resume", str(HANDOFF), "U-1", *where, "--answer", "Refunded."]) == 0
    capsys.readouterr()
    assert server.count == calls

    assert main([*resumed, "--approve"]) == 1
    assert "resolved already" in capsys.readouterr().err
    assert main(["handoff", "resume", str(HANDOFF), "U-9", *where, "--approve"]) == 1
    assert "no handoff" in capsys.readouterr().err
    assert main(["handoff", "resume", str(HANDOFF), "U-1", *where]) == 2
    assert "exactly one of" in capsys.readouterr().err

    labels = tmp_path / "human.jsonl"
    assert main(["handoff", "export", str(HANDOFF), *where, "-o", str(labels)]) == 0
    rows = load_labeled(labels)
    assert {(r.text, r.label) for r in rows} == {
        ("My parcel never came.", "shipping"),
        ("I was charged twice.", "billing"),
    }


def test_graph_check_says_when_a_person_answers_and_show_draws_the_human_node(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["graph", "check", str(HANDOFF)]) == 0
    out = capsys.readouterr().out
    assert "handoff: a person answers on confidence below 0.6; category legal; contact 4 or later" in out
    assert main(["graph", "show", str(HANDOFF)]) == 0
    drawing = capsys.readouterr().out
    assert "flagship -. &nbsp;hand off&nbsp; .-> human;" in drawing and "human --> __end__;" in drawing
