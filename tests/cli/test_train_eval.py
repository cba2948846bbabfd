"""``triagegate train`` and ``triagegate eval``, plus the scoring path for chat-model minis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import yaml

from tests.cli.test_calibrate import small_cascade
from tests.models.test_classifier import EXAMPLES, write_graph
from tests.support.shared_data import shared_file
from triagegate.cli import main

BITEXT_CATEGORIES = [
    "ACCOUNT",
    "ORDER",
    "REFUND",
    "DELIVERY",
    "INVOICE",
    "FEEDBACK",
    "PAYMENT",
    "CONTACT",
    "SHIPPING_ADDRESS",
    "CANCELLATION_FEE",
    "NEWSLETTER",
]


@pytest.fixture(autouse=True)
def restore_structlog() -> Iterator[None]:
    saved = structlog.get_config()
    saved["processors"] = list(saved["processors"])
    yield
    structlog.configure(**saved)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIAGEGATE_CACHE_DIR", str(tmp_path / "cache"))


def tickets_csv(path: Path, copies: int = 3) -> Path:
    lines = ["text,label"]
    for n in range(copies):
        for label, texts in EXAMPLES.items():
            lines += [f'"{t} ({n})",{label}' for t in texts]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_train_then_eval_with_model_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tickets_csv(tmp_path / "tickets.csv")
    graph = write_graph(tmp_path)
    model = tmp_path / "models" / "m.skops"
    assert main(["train", str(graph), str(data), "-o", str(model), "--split", "0.2", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "billing" in out and "held-out accuracy" in out and model.is_file()

    assert main(["train", str(graph), str(data), "-o", str(model), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["labels"] == {"account": 15, "billing": 15, "shipping": 15} and summary["split"] is None

    served = write_graph(tmp_path, mini_options={"model_path": "models/m.skops"}, name="served.yaml")
    report_file = tmp_path / "out" / "report.json"
    code = main(
        [
            "eval",
            str(served),
            str(data),
            "--split",
            "0.2",
            "--seed",
            "5",
            "--json",
            "--output",
            str(report_file),
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(report_file.read_text(encoding="utf-8"))
    assert report["tickets"] == 9 and report["split"]["test_rows"] == 9 and report["threshold"] == 0.5
    assert 0.0 <= report["accuracy"] <= 1.0 and report["at_threshold"]["threshold"] == 0.5
    assert report["gate"]["kept"] + report["gate"]["escalated"] == 9
    assert report["cost"]["kept_usd"] > 0 and "estimate" in report["cost"]["basis"]
    assert report["curve"][0]["threshold"] == 0.0 and report["curve"][0]["coverage"] == 1.0

    assert main(["eval", str(served), str(data), "--limit", "4"]) == 0
    out = capsys.readouterr().out
    assert "4 tickets" in out and "selective curve" in out and "operating points" in out


def test_train_refuses_labels_outside_taxonomy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.csv"
    data.write_text("text,label\na,billing\nb,shipping\nc,account\nd,refunds\n", encoding="utf-8")
    assert main(["train", str(write_graph(tmp_path)), str(data), "-o", str(tmp_path / "m.skops")]) == 2
    err = capsys.readouterr().err
    assert "extra refunds" in err and "the taxonomy has: billing, shipping, account" in err
    assert not (tmp_path / "m.skops").exists()


def test_eval_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tickets_csv(tmp_path / "tickets.csv", copies=1)
    graph = write_graph(tmp_path)
    assert main(["eval", str(graph), str(data), "--train"]) == 2
    assert "--train needs --split" in capsys.readouterr().err
    other = tmp_path / "other.csv"
    other.write_text("text,label\na,billing\nb,spam\n", encoding="utf-8")
    assert main(["eval", str(graph), str(other)]) == 2
    assert "labels not in the graph's taxonomy: spam" in capsys.readouterr().err
    assert main(["eval", str(graph), str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv: file not found" in capsys.readouterr().err


def test_eval_train_split_on_bitext(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bitext = shared_file("bitext-customer-support-4.5k.csv")
    graph = write_graph(tmp_path, examples={c: [] for c in BITEXT_CATEGORIES}, threshold=0.6)
    # Kept fast: fit on the seeded 20% (--split 0.8 holds out the other 80%) and test 300 of the rest.
    args = ["eval", str(graph), str(bitext), "--train", "--split", "0.8", "--limit", "300", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trained_on_split"] and report["tickets"] == 300
    assert report["split"] == {"fraction": 0.8, "seed": 13, "train_rows": 903, "test_rows": 300}
    assert report["accuracy"] >= 0.97, report["accuracy"]
    assert report["at_threshold"]["coverage"] >= 0.9


def test_score_rows_with_a_chat_model_mini(tmp_path: Path) -> None:
    """A chat-model mini goes through triage_node: option codes, failures recorded, not raised."""
    from triagegate.models.base import ChatRequest
    from triagegate.replies import category_codes
    from triagegate.spec import load_spec
    from triagegate.tuning.datasets import LabeledText
    from triagegate.tuning.scoring import score_rows, triage_backend

    doc = yaml.safe_load(write_graph(tmp_path).read_text(encoding="utf-8"))
    doc["models"]["mini"] = {"backend": "scripted", "model": "chatty"}
    (tmp_path / "chat.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    loaded = load_spec(tmp_path / "chat.yaml")
    codes = {name: code for code, name in (category_codes(loaded.spec) or {}).items()}

    def chat(request: ChatRequest) -> str:
        text = "\n".join(m.text for m in request.messages)
        if "explode" in text:
            return "not json at all"
        category = "shipping" if "parcel" in text else "billing"
        return json.dumps(
            {
                "category": codes[category],
                "priority": "normal",
                "complexity": "low",
                "needs_vision": False,
                "answer": "ok",
                "confidence": 0.9 if category == "shipping" else 0.3,
            }
        )

    alias, backend = triage_backend(
        loaded, environ={}, cache_dir=tmp_path / "cache", extras={"scripted": {"mini": {"chat": chat}}}
    )
    rows = [
        LabeledText("where is my parcel", "shipping", 2),
        LabeledText("charged twice", "billing", 3),
        LabeledText("explode please", "account", 4),
    ]
    run = asyncio.run(score_rows(loaded, rows, backend, alias, concurrency=2))
    assert run.scored == [
        ("shipping", "shipping", 0.9),
        ("billing", "billing", 0.3),
        ("account", "unknown", 0.0),
    ]
    assert run.gate_kept == [True, False, False]
    assert run.gate_reasons["low_confidence"] == 2 and run.gate_reasons["triage_failed"] == 1
    assert len(run.errors) == 1 and run.errors[0].startswith("line 4: triage failed")


__all__ = ["small_cascade"]  # the fixture: graphs/cascade.yaml on the scripted loopback server


def test_eval_cascade_reports_every_tier_at_the_graphs_thresholds(
    small_cascade: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TRIAGEGATE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "200")
    graph, data = small_cascade
    assert main(["eval", str(graph), str(data), "--cascade", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    at = report["at_graph"]
    assert at["thresholds"] == {"classifier": 0.9, "small": 0.8}
    small = at["tiers"][1]
    # the small model is sure exactly when right, so at 0.8 it answers only what it knows
    assert small["answered"] > 0 and small["accuracy"] == 1.0
    assert report["tier_curves"][1]["at_threshold"]["accuracy_kept"] == 1.0
    assert main(["eval", str(graph), str(data), "--cascade"]) == 0
    printed = capsys.readouterr().out
    assert "tier small:" in printed and "last tier alone" in printed
