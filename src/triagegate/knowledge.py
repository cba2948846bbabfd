"""The knowledge base: a folder of Markdown articles the answering tiers are grounded in.

A graph file may name one (``knowledge_base: ../kb``). Each ``*.md`` file in the folder is
one article: its id is the file's stem (``refunds.md`` -> ``refunds``) and its title is the
first Markdown heading. The folder is read and indexed once, when the pipeline loads, and
searched per ticket offline: TF-IDF (scikit-learn's) over stemmed words (Snowball's English
stemmer, so "charged" finds "charges") and their bigrams, with sublinear term frequency,
scored by cosine similarity. A score is between 0 and 1 whatever the size of the folder, so
``min_score`` means the same in every knowledge base (BM25's scores grow with the corpus).
``bench/bench_retrieval.py`` compares it with BM25 on the labelled set in
``bench/data/kb_tickets.jsonl``.

What a search returns is what the prompt shows the model and what ``Outcome.sources``
cites: the best ``top_k`` articles scoring at least ``min_score``. A ticket with none is
*ungrounded*, which a gate can escalate (``always_escalate.ungrounded``).
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import Stemmer
from sklearn.feature_extraction.text import TfidfVectorizer

from triagegate.errors import ConfigError
from triagegate.types import Ticket

if TYPE_CHECKING:
    from triagegate.spec import LoadedSpec

_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
"""An ATX Markdown heading; the first one in a file is its article's title."""
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True, slots=True)
class Article:
    """One Markdown article: ``id`` is the file stem, ``title`` its first heading, ``body`` the rest."""

    id: str
    title: str
    body: str
    path: str


@dataclass(frozen=True, slots=True)
class Hit:
    """An article that supports a ticket, with its cosine similarity to it (0 to 1)."""

    article: Article
    score: float

    @property
    def id(self) -> str:
        return self.article.id


def read_article(path: Path) -> Article:
    """Read one article; raises :class:`ConfigError` naming the file for one that cannot serve.

    The first heading is the title and is taken out of the body; an article needs a title
    (the model is told which article it reads) and some text under it.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError("knowledge-base article is not UTF-8 text", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read knowledge-base article: {exc.strerror}", file=str(path)) from None
    heading = _HEADING.search(text)
    if heading is None:
        raise ConfigError(
            "knowledge-base article has no Markdown heading: start it with a title line such as '# Refunds'",
            file=str(path),
        )
    body = (text[: heading.start()] + text[heading.end() :]).strip()
    if not body:
        raise ConfigError(
            "knowledge-base article has a title but no text under it",
            file=str(path),
            line=_line(text, heading),
        )
    if not _ID.match(path.stem):
        raise ConfigError(
            f"article id {path.stem!r} (the file name) must start with a letter or digit and use only "
            "letters, digits, '.', '_' and '-': rename the file",
            file=str(path),
        )
    return Article(id=path.stem, title=heading.group(1).strip(), body=body, path=str(path))


def _line(text: str, match: re.Match[str]) -> int:
    return text.count("\n", 0, match.start()) + 1


def analyzer() -> Callable[[str], list[str]]:
    """Text to index terms: scikit-learn's lower-cased, accent-stripped words without English stop
    words, stemmed, plus each pair of neighbouring stems."""
    words = TfidfVectorizer(stop_words="english", strip_accents="unicode").build_analyzer()
    stemmer = Stemmer.Stemmer("english")

    def analyze(text: str) -> list[str]:
        stems: list[str] = stemmer.stemWords(words(text))
        return stems + [f"{a} {b}" for a, b in itertools.pairwise(stems)]

    return analyze


class KnowledgeBase:
    """The articles of one folder and their TF-IDF index; :meth:`search` is pure and thread-safe."""

    def __init__(self, articles: list[Article], *, top_k: int = 3, min_score: float = 0.1) -> None:
        if not articles:
            raise ConfigError("a knowledge base needs at least one article")
        self.articles = articles
        self.top_k = top_k
        self.min_score = min_score
        self._analyze = analyzer()
        self.vectorizer = TfidfVectorizer(analyzer=self._analyze, sublinear_tf=True)
        """The fitted vectorizer; :meth:`scores` computes what its ``transform`` would, faster."""
        # The title counts twice: it names what the article is about in the fewest words.
        matrix = self.vectorizer.fit_transform([f"{a.title}\n{a.title}\n{a.body}" for a in articles])
        terms = matrix.T.tocsr()
        self._postings = (terms.indptr, terms.indices, terms.data)
        """Per term, the articles that have it and its weight in each (the index's rows by term)."""
        self._vocabulary: dict[str, int] = self.vectorizer.vocabulary_
        self._idf: np.ndarray = self.vectorizer.idf_

    @classmethod
    def load(cls, folder: Path, *, top_k: int = 3, min_score: float = 0.1) -> KnowledgeBase:
        """Read every ``*.md`` file of ``folder`` (not its subfolders), sorted by name, and index them."""
        if not folder.is_dir():
            raise ConfigError("knowledge base folder not found", file=str(folder))
        paths = sorted(folder.glob("*.md"))
        if not paths:
            raise ConfigError("knowledge base folder has no Markdown articles (*.md)", file=str(folder))
        return cls([read_article(p) for p in paths], top_k=top_k, min_score=min_score)

    def __len__(self) -> int:
        return len(self.articles)

    def article(self, article_id: str) -> Article:
        for article in self.articles:
            if article.id == article_id:
                return article
        raise KeyError(f"no article {article_id!r} (has: {', '.join(a.id for a in self.articles)})")

    def scores(self, text: str) -> np.ndarray:
        """The cosine similarity of ``text`` to every article, in :attr:`articles` order.

        The query's TF-IDF vector is the one ``vectorizer.transform`` gives (sublinear term
        frequency times the fitted idf, L2-normalised), built from the terms the index knows;
        the dot products are summed along each term's postings, which for one short text takes a
        tenth of the time ``transform`` and a sparse product take.
        """
        scores = np.zeros(len(self.articles))
        counts = Counter(t for t in self._analyze(text) if t in self._vocabulary)
        if not counts:
            return scores
        columns = [self._vocabulary[t] for t in counts]
        weights = np.array([1.0 + math.log(c) for c in counts.values()]) * self._idf[columns]
        weights /= np.linalg.norm(weights)
        indptr, indices, data = self._postings
        for column, weight in zip(columns, weights, strict=True):
            start, end = indptr[column], indptr[column + 1]
            scores[indices[start:end]] += weight * data[start:end]
        return scores

    def search(self, text: str, *, k: int | None = None, min_score: float | None = None) -> list[Hit]:
        """The best ``k`` (default ``top_k``) articles for ``text`` scoring at least ``min_score``, best first."""
        k = self.top_k if k is None else k
        floor = self.min_score if min_score is None else min_score
        scores = self.scores(text)
        order = np.argsort(-scores, kind="stable")[:k]
        return [
            Hit(self.articles[i], float(scores[i])) for i in order if scores[i] >= floor and scores[i] > 0
        ]

    def for_ticket(self, ticket: Ticket) -> list[Hit]:
        """The articles supporting ``ticket``, searched by its subject and text."""
        return self.search(f"{ticket.subject}\n{ticket.text}" if ticket.subject else ticket.text)


def load_for(loaded: LoadedSpec) -> KnowledgeBase | None:
    """The knowledge base a graph names, read and indexed (``None`` when it names none).

    Raises :class:`ConfigError` naming the article file for one that cannot serve; the
    folder's existence was checked with the graph file (file, line and key).
    """
    spec = loaded.spec.knowledge_base
    if spec is None or loaded.knowledge_dir is None:
        return None
    return KnowledgeBase.load(loaded.knowledge_dir, top_k=spec.top_k, min_score=spec.min_score)


def content_texts(kb: KnowledgeBase | None) -> dict[str, str]:
    """``{"kb:<id>": text}`` for every article, for the graph hash: other articles, other answers."""
    if kb is None:
        return {}
    return {f"kb:{a.id}": f"{a.title}\n{a.body}" for a in kb.articles}
