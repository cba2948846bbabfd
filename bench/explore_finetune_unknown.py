"""Does fine-tuning the sentence encoder reach issue 12's unknown-intent target? A measurement, not a feature.

Not a ``bench_*.py`` script, so ``bench/run_all.py`` leaves it out: it needs PyTorch, which
triagegate does not depend on, in a venv of its own (below), and about 15 minutes.

Same protocol as ``bench_classifier.unknown_intents`` (its helpers are imported): per seed, 10
unknown intents drawn by ``random.Random(1000 + seed)``, 10 training rows for each of the 67
known intents (``sample_per_label(train, 10, seed, known)``), tested on all of BANKING77's test
file. all-MiniLM-L6-v2 (the same safetensors the ``encoder`` extra installs, sha256-checked by
``triagegate.models.encoder``) is fine-tuned under PyTorch on the 670 training rows only, then
the fine-tuned encoder's embeddings go through the unchanged encoder-classifier pipeline
(``encoder_training.fit``: ``[2 x embedding, TF-IDF]``, tempered logistic regression). The
un-fine-tuned encoder (triagegate's numpy forward pass) is scored on the same seeds in the same run.

Variants (``--variant``):

* ``ce``: encoder + cosine-softmax head (class weights initialised at the class means of the
  embeddings, scale ``--scale``), cross-entropy end to end;
* ``setfit``: SetFit-style contrastive pairs (``--pairs`` positive and as many negative pairs
  per row, cosine-similarity regression to 1 / 0).

Hyper-parameters are chosen with ``--dev``: the same protocol on BANKING77's *training* file only
(unknown intents by ``random.Random(2000 + seed)``, 10-shot rows by seed ``100 + seed``, scored on
``--dev-rows`` other training rows), never on the test file.

    # the run in bench/out/finetune_unknown.json (5 epochs chosen on the development split):
    /tmp/ftvenv/bin/python bench/explore_finetune_unknown.py --variant ce --epochs 5 --lr 5e-5 --seeds 0 1 2 3 4
    # the selection runs (training file only):
    /tmp/ftvenv/bin/python bench/explore_finetune_unknown.py --dev --variant ce --epochs 2 5 10 --seeds 0
    /tmp/ftvenv/bin/python bench/explore_finetune_unknown.py --dev --variant setfit --epochs 1 --pairs 3 --lr 2e-5 --seeds 0

The venv: ``python3 -m venv /tmp/ftvenv && /tmp/ftvenv/bin/pip install torch==2.13.0`` (CPU build)
and ``/tmp/ftvenv/bin/pip install -e '.[encoder]'``; PyTorch is not a dependency of triagegate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_classifier as bc
import torch
from torch import nn

from triagegate.models import encoder as enc
from triagegate.tuning import encoder_training

OUT = bc.REPO / "bench" / "out" / "finetune_unknown.json"
TARGET = bc.TARGETS["fewshot_kept_accuracy"]


class TorchMiniLM(nn.Module):
    """all-MiniLM-L6-v2 in PyTorch, mirroring ``triagegate.models.encoder._forward`` (exact-erf GELU)."""

    def __init__(self, w: dict[str, np.ndarray], heads: int, layers: int, eps: float) -> None:
        super().__init__()

        def p(name: str) -> nn.Parameter:
            return nn.Parameter(torch.from_numpy(np.array(w[name], dtype=np.float32)))

        self.heads, self.eps = heads, eps
        self.word = p("embeddings.word_embeddings.weight")
        self.position = p("embeddings.position_embeddings.weight")
        self.token_type = p("embeddings.token_type_embeddings.weight")
        self.ln0 = nn.LayerNorm(enc.DIMENSION, eps=eps)
        self.ln0.weight, self.ln0.bias = p("embeddings.LayerNorm.weight"), p("embeddings.LayerNorm.bias")
        self.blocks = nn.ModuleList()
        for i in range(layers):
            pre = f"encoder.layer.{i}"
            block = nn.Module()
            for short, name in (
                ("q", "attention.self.query"),
                ("k", "attention.self.key"),
                ("v", "attention.self.value"),
                ("o", "attention.output.dense"),
                ("up", "intermediate.dense"),
                ("down", "output.dense"),
            ):
                weight = w[f"{pre}.{name}.weight"]
                lin = nn.Linear(weight.shape[1], weight.shape[0])
                lin.weight, lin.bias = p(f"{pre}.{name}.weight"), p(f"{pre}.{name}.bias")
                setattr(block, short, lin)
            for short, name in (("ln1", "attention.output.LayerNorm"), ("ln2", "output.LayerNorm")):
                ln = nn.LayerNorm(enc.DIMENSION, eps=eps)
                ln.weight, ln.bias = p(f"{pre}.{name}.weight"), p(f"{pre}.{name}.bias")
                setattr(block, short, ln)
            self.blocks.append(block)

    @classmethod
    def from_installed(cls) -> TorchMiniLM:
        from safetensors.numpy import load_file

        located = enc._locate()
        enc.load_encoder()  # checks the weights' sha256
        config = json.loads((located.folder / "config.json").read_text(encoding="utf-8"))
        w = load_file(str(located.folder / "model.safetensors"))
        return cls(
            w,
            int(config["num_attention_heads"]),
            int(config["num_hidden_layers"]),
            float(config.get("layer_norm_eps", 1e-12)),
        )

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length = ids.shape
        width = enc.DIMENSION // self.heads
        x = self.ln0(self.word[ids] + self.position[:length] + self.token_type[0])
        attend = ((1.0 - mask) * -1e4)[:, None, None, :]
        for b in self.blocks:

            def split(t: torch.Tensor) -> torch.Tensor:
                return t.view(batch, length, self.heads, width).transpose(1, 2)

            q, k, v = split(b.q(x)), split(b.k(x)), split(b.v(x))
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(width) + attend
            context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, enc.DIMENSION)
            x = b.ln1(b.o(context) + x)
            x = b.ln2(b.down(nn.functional.gelu(b.up(x))) + x)
        pooled = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=1)


def batch_ids(tokenizer: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = [e.ids for e in tokenizer.encode_batch(texts)]
    length = max(len(e) for e in encoded)
    ids = torch.zeros((len(texts), length), dtype=torch.long)
    mask = torch.zeros((len(texts), length), dtype=torch.float32)
    for r, e in enumerate(encoded):
        ids[r, : len(e)] = torch.tensor(e)
        mask[r, : len(e)] = 1.0
    return ids, mask


def embed(model: TorchMiniLM, tokenizer: Any, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Embeddings of ``texts`` in input order (length-sorted batches, no gradient)."""
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), enc.DIMENSION), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            ids, mask = batch_ids(tokenizer, [texts[i] for i in rows])
            out[rows] = model(ids, mask).numpy()
    return out


def fine_tune(texts: list[str], labels: list[str], args: argparse.Namespace, seed: int) -> TorchMiniLM:
    """A fresh copy of the pretrained encoder fine-tuned on ``texts``/``labels`` only."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = TorchMiniLM.from_installed()
    # The word-embedding table (30,522 x 384) stays frozen: its dense gradient and Adam state
    # doubled a step's time, and 670 rows touch few of its rows.
    model.word.requires_grad_(False)
    tokenizer = enc.load_encoder().tokenizer
    names = sorted(set(labels))
    y = torch.tensor([names.index(label) for label in labels])
    params: list[dict[str, Any]] = [
        {"params": [q for q in model.parameters() if q.requires_grad], "lr": args.lr}
    ]
    head = None
    if args.variant == "ce":
        start = torch.from_numpy(embed(model, tokenizer, texts))
        means = torch.stack([start[y == j].mean(0) for j in range(len(names))])
        head = nn.Parameter(nn.functional.normalize(means, dim=1))
        params.append({"params": [head], "lr": args.head_lr})
    optimiser = torch.optim.AdamW(params, weight_decay=0.01)
    if args.variant == "ce":
        batches = []
        for _ in range(args.epochs):
            order = list(range(len(texts)))
            rng.shuffle(order)
            batches += [order[i : i + args.batch] for i in range(0, len(order), args.batch)]
    else:
        by_label: dict[int, list[int]] = {}
        for i, j in enumerate(y.tolist()):
            by_label.setdefault(j, []).append(i)
        pairs: list[tuple[int, int, float]] = []
        for _ in range(args.epochs):
            for i, j in enumerate(y.tolist()):
                for _ in range(args.pairs):
                    pairs.append((i, rng.choice([k for k in by_label[j] if k != i]), 1.0))
                    other = rng.choice([c for c in by_label if c != j])
                    pairs.append((i, rng.choice(by_label[other]), 0.0))
        rng.shuffle(pairs)
        batches = [pairs[i : i + args.batch] for i in range(0, len(pairs), args.batch)]
    total = len(batches)
    warm = max(1, total // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
    )
    model.train()
    for step, batch in enumerate(batches):
        if args.variant == "ce":
            ids, mask = batch_ids(tokenizer, [texts[i] for i in batch])
            z = model(ids, mask) @ nn.functional.normalize(head, dim=1).T
            loss = nn.functional.cross_entropy(args.scale * z, y[batch])
        else:
            a = [texts[i] for i, _, _ in batch]
            b = [texts[k] for _, k, _ in batch]
            ids, mask = batch_ids(tokenizer, a + b)
            e = model(ids, mask)
            cos = (e[: len(batch)] * e[len(batch) :]).sum(1)
            loss = nn.functional.mse_loss(cos, torch.tensor([t for _, _, t in batch]))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        scheduler.step()
        if step % 20 == 0:
            print(f"    step {step}/{total} loss {loss.item():.4f}", flush=True)
    model.eval()
    return model


def score(
    rows: list[Any],
    emb_rows: np.ndarray,
    test: list[Any],
    emb_test: np.ndarray,
    unknown: set[str],
) -> dict[str, Any]:
    """Fit the encoder-classifier pipeline on ``rows`` and read the unknown-intent measures off ``test``."""
    model = encoder_training.fit([r.text for r in rows], [r.label for r in rows], embeddings=emb_rows)
    scored = bc.predictions(model, test, emb_test)
    known = [s for s, r in zip(scored, test, strict=True) if r.label not in unknown]
    unknown_scored = [s for s, r in zip(scored, test, strict=True) if r.label in unknown]
    point = bc.coverage_at(known, TARGET)
    threshold = point["threshold"]
    escalated = (
        sum(s[2] < threshold for s in unknown_scored) / len(unknown_scored) if threshold is not None else 1.0
    )
    return {
        "known_accuracy": bc.accuracy(known),
        "known_coverage_at_97": point["coverage"],
        "known_accuracy_kept": point["accuracy_kept"],
        "threshold": threshold,
        "unknown_escalated": escalated,
        "unknown_rows": len(unknown_scored),
        "temperature": model.metadata.temperature,
    }


def run_split(
    rows: list[Any], test: list[Any], unknown: set[str], args: argparse.Namespace, seed: int, base: Any
) -> dict[str, Any]:
    """Baseline (numpy encoder) and fine-tuned scores on one split; ``base`` embeds with the numpy encoder."""
    texts = [r.text for r in rows]
    baseline = score(rows, base(texts), test, base([r.text for r in test]), unknown)
    print(f"  baseline: {json.dumps(baseline)}", flush=True)
    wall, cpu = time.perf_counter(), time.process_time()
    model = fine_tune(texts, [r.label for r in rows], args, seed)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tokenizer = enc.load_encoder().tokenizer
    started = time.perf_counter()
    emb_test = embed(model, tokenizer, [r.text for r in test])
    embed_seconds = time.perf_counter() - started
    tuned = score(rows, embed(model, tokenizer, texts), test, emb_test, unknown)
    tuned.update(
        finetune_wall_seconds=round(wall, 1),
        finetune_cpu_seconds=round(cpu, 1),
        embed_test_wall_seconds=round(embed_seconds, 1),
    )
    print(f"  fine-tuned: {json.dumps(tuned)}", flush=True)
    return {"seed": seed, "unknown_intents": sorted(unknown), "baseline": baseline, "finetuned": tuned}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=("ce", "setfit"), default="ce")
    parser.add_argument("--epochs", type=int, nargs="+", default=[4])
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--head-lr", type=float, default=1e-2)
    parser.add_argument("--scale", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--dev", action="store_true", help="Choose hyper-parameters on the training file only."
    )
    parser.add_argument("--dev-rows", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(2)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    cache = bc.EmbeddingCache(Path(bc.tempfile.gettempdir()) / "triagegate-bench-embeddings")

    def base(texts: list[str]) -> np.ndarray:
        return cache.get(texts)[0]

    train, test = bc.banking77_rows()
    intents = sorted({r.label for r in train})
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    results: dict[str, Any] = {
        "started": started,
        "machine": f"{platform.machine()} ({os.cpu_count()} CPUs)",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_before": list(os.getloadavg()),
        "dev": args.dev,
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "dev")},
        "runs": [],
    }
    for epochs in args.epochs:
        for seed in args.seeds:
            one = argparse.Namespace(**{**vars(args), "epochs": epochs})
            if args.dev:
                unknown = set(random.Random(2000 + seed).sample(intents, bc.HELD_OUT_INTENTS))
                idx = bc.sample_per_label(train, bc.FEWSHOT, 100 + seed, set(intents) - unknown)
                taken = set(idx)
                rest = [i for i in range(len(train)) if i not in taken]
                held = sorted(random.Random(3000 + seed).sample(rest, args.dev_rows))
                evaluate_on = [train[i] for i in held]
            else:
                unknown = set(random.Random(1000 + seed).sample(intents, bc.HELD_OUT_INTENTS))
                idx = bc.sample_per_label(train, bc.FEWSHOT, seed, set(intents) - unknown)
                evaluate_on = test
            print(f"{'dev' if args.dev else 'test'} seed {seed}, {args.variant}, {epochs} epochs", flush=True)
            run = run_split([train[i] for i in idx], evaluate_on, unknown, one, seed, base)
            run["epochs"] = epochs
            results["runs"].append(run)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    results["load_average_after"] = list(os.getloadavg())
    results["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    keys = ("known_accuracy", "known_coverage_at_97", "unknown_escalated")
    results["mean"] = {
        str(epochs): {
            which: {
                k: float(np.mean([r[which][k] for r in results["runs"] if r["epochs"] == epochs]))
                for k in keys
            }
            for which in ("baseline", "finetuned")
        }
        for epochs in args.epochs
    }
    args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(json.dumps(results["mean"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
