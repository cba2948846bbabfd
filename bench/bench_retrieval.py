"""Benchmark knowledge-base retrieval: hit rate on labelled tickets and time per ticket.

Issue 16 ("answers grounded in the team's knowledge base"). ``bench/data/kb_tickets.jsonl``
holds tickets written for the articles in ``kb/``, each labelled with the article that
answers it (47), or with none (5 off-topic ones). Every method indexes the same texts (each
article's title twice, then its body) and is measured in the same run:

* ``triagegate``: :class:`triagegate.knowledge.KnowledgeBase`, stemmed TF-IDF with bigrams
  and its postings-based query (what the pipeline runs);
* ``tfidf-transform`` (the baseline): scikit-learn's ``TfidfVectorizer`` with English stop
  words and bigrams, no stemming, queried through ``transform`` and a sparse product;
* ``bm25s`` and ``rank-bm25`` (the ``bench`` extra), with the same stemmer, where installed.

For each: top-1 and top-3 hit rate over the labelled tickets, how many off-topic tickets find
an article (over ``min_score`` for the cosine methods; BM25 scores have no fixed scale, so
any positive score counts), and the median time per ticket (wall and this thread's CPU time,
since the machine is shared) over ``--repeat`` passes. Writes ``bench/out/retrieval.json``.

    .venv/bin/python bench/bench_retrieval.py [--repeat 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402

from triagegate.knowledge import KnowledgeBase, analyzer  # noqa: E402

DATA = ROOT / "bench" / "data" / "kb_tickets.jsonl"
OUT = ROOT / "bench" / "out" / "retrieval.json"

Scorer = Callable[[str], Sequence[float]]


def documents(kb: KnowledgeBase) -> list[str]:
    return [f"{a.title}\n{a.title}\n{a.body}" for a in kb.articles]


def baseline(kb: KnowledgeBase) -> Scorer:
    vectorizer = TfidfVectorizer(
        sublinear_tf=True, ngram_range=(1, 2), stop_words="english", strip_accents="unicode"
    )
    matrix = vectorizer.fit_transform(documents(kb))
    return lambda text: np.asarray((matrix @ vectorizer.transform([text]).T).toarray()).ravel()


def bm25_scorers(kb: KnowledgeBase) -> dict[str, Scorer]:
    analyze = analyzer()

    def words(text: str) -> list[str]:
        return [t for t in analyze(text) if " " not in t]

    out: dict[str, Scorer] = {}
    try:
        import bm25s

        index = bm25s.BM25()
        corpus = [words(d) for d in documents(kb)]
        index.index(corpus, show_progress=False)
        vocab = {w for doc in corpus for w in doc}

        def bm25s_scores(text: str) -> Sequence[float]:
            known = [w for w in words(text) if w in vocab]
            return index.get_scores(known) if known else np.zeros(len(corpus))

        out["bm25s"] = bm25s_scores
    except ImportError:
        print("bm25s not installed (pip install -e '.[bench]'): skipped", file=sys.stderr)
    try:
        from rank_bm25 import BM25Okapi

        okapi = BM25Okapi([words(d) for d in documents(kb)])
        out["rank-bm25"] = lambda text: okapi.get_scores(words(text))
    except ImportError:
        print("rank-bm25 not installed (pip install -e '.[bench]'): skipped", file=sys.stderr)
    return out


def measure(
    name: str, score: Scorer, kb: KnowledgeBase, rows: list[dict[str, str | None]], floor: float, repeat: int
) -> dict[str, float | int | str]:
    ids = [a.id for a in kb.articles]
    top1 = top3 = labelled = grounded_off_topic = 0
    for row in rows:
        text = str(row["text"])
        scores = np.asarray(score(text), dtype=float)
        order = np.argsort(-scores, kind="stable")[:3]
        if row["article"] is None:
            grounded_off_topic += int(scores[order[0]] > floor)
            continue
        labelled += 1
        best = [ids[i] for i in order]
        top1 += best[0] == row["article"]
        top3 += row["article"] in best
    texts = [str(r["text"]) for r in rows]
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.thread_time()
        for text in texts:
            score(text)
        walls.append((time.perf_counter() - wall) / len(texts))
        cpus.append((time.thread_time() - cpu) / len(texts))
    return {
        "method": name,
        "top1": top1 / labelled,
        "top3": top3 / labelled,
        "labelled": labelled,
        "off_topic_grounded": grounded_off_topic,
        "off_topic": len(rows) - labelled,
        "us_per_ticket_wall": statistics.median(walls) * 1e6,
        "us_per_ticket_cpu": statistics.median(cpus) * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="5 passes instead of --repeat")
    args = parser.parse_args(argv)
    repeat = 5 if args.quick else args.repeat
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    kb = KnowledgeBase.load(ROOT / "kb", top_k=3, min_score=0.0)
    floor = 0.1  # the shipped default min_score, for the cosine methods
    methods: dict[str, Scorer] = {"tfidf-transform": baseline(kb), "triagegate": kb.scores}
    methods.update(bm25_scorers(kb))
    results = [
        measure(name, score, kb, rows, floor if name in ("tfidf-transform", "triagegate") else 0.0, repeat)
        for name, score in methods.items()
    ]
    base = results[0]
    print(
        f"{len(kb)} articles, {base['labelled']} labelled tickets, {base['off_topic']} off-topic; {repeat} passes"
    )
    print(
        f"{'method':<16} {'top-1':>6} {'top-3':>6} {'off-topic found':>16} {'us/ticket':>10} {'cpu us':>8} {'x baseline':>11}"
    )
    for r in results:
        ratio = float(r["us_per_ticket_cpu"]) / float(base["us_per_ticket_cpu"])
        r["cpu_ratio_to_baseline"] = ratio
        print(
            f"{r['method']:<16} {r['top1']:>6.3f} {r['top3']:>6.3f} "
            f"{str(r['off_topic_grounded']) + '/' + str(r['off_topic']):>16} "
            f"{r['us_per_ticket_wall']:>10.1f} {r['us_per_ticket_cpu']:>8.1f} {ratio:>11.2f}"
        )
    texts = [str(r["text"]) for r in rows]
    passes = []
    for _ in range(repeat):
        cpu = time.thread_time()
        for text in texts:
            kb.search(text)
        passes.append((time.thread_time() - cpu) / len(texts))
    search_us = statistics.median(passes) * 1e6
    print(f"triagegate KnowledgeBase.search (scores, ranking, hits): {search_us:.1f} us CPU per ticket")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps({"repeat": repeat, "results": results, "search_us_cpu": search_us}, indent=1) + "\n",
        encoding="utf-8",
    )
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
