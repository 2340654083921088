"""word2vec vectors → a token embedding matrix whose row i is token i's vector.

Vectors trained on the tokenizer's pieces (`word2vec.input = "pieces"`) are keyed by the exact
piece strings (`tokenizer.piece(i)`, see `lm.word2vec.piece_sentences`), so token i's row is the
vector of its piece. Pieces word2vec did not keep (rarer than `min_count`, or never in a
sentence: end-of-text, the newline piece, unseen bytes) get random vectors from a seeded
generator, at the scale (RMS) of the found ones: they start as a random initialisation would,
and stay distinct from one another, which zeros would not.

When the model's width differs from the vectors' (a GPT's `n_embd`), the vectors are mapped
rather than refused, because word2vec's usual sizes (100, 300) rarely equal a transformer's width:
- narrower: onto the top principal components of the found vectors (centred PCA): the `dim`
  directions that keep most of their variance. Signs are fixed (largest entry of each component
  positive), so the result does not depend on the SVD routine.
- wider: by a seeded random map with orthonormal columns, an isometry: every length, angle and
  distance between vectors is kept exactly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from lm.models.config import ModelConfig, word2vec_width
from lm.token_bytes import BYTE_PIECE
from lm.word2vec import Word2VecError

logger = logging.getLogger("lm.models.embeddings")

# Below this share of the non-byte pieces found, the vectors were most likely not trained on
# this tokenizer's pieces. Byte-fallback pieces are left out of it: most never occur in text.
LOW_COVERAGE = 0.5


class PieceEmbedding(NamedTuple):
    matrix: torch.Tensor  # (vocab_size, dim), float32
    covered: torch.Tensor  # (vocab_size,), bool: the row is the piece's word2vec vector

    @property
    def coverage(self) -> float:
        """The fraction of the vocabulary's ids whose piece has a vector."""
        return float(self.covered.float().mean())


def vectors_digest(vectors) -> str:
    """The digest the word2vec stage records for `vectors`: their values and their words."""
    import hashlib

    digest = hashlib.sha256(vectors.vectors.tobytes())
    digest.update("\n".join(vectors.index_to_key).encode())
    return digest.hexdigest()


def keys_file(path: Path) -> Path:
    """The file of the words beside a vectors file (`vectors.npy`: `vectors.keys.json`)."""
    return path.with_suffix(".keys.json")


def save_keyed_vectors(vectors, path: Path) -> None:
    """Write gensim `KeyedVectors` as a plain array (`path`, `.npy` without pickles) and their
    words in order (`keys_file(path)`, JSON): gensim's own `save` is a pickle, and loading one
    runs whatever code it names, so a file dropped in a shared workspace (same size as the
    manifest's, before the digest could be checked) ran a command as the run's user."""
    import numpy as np

    with open(path, "wb") as file:  # a path not ending .npy would have it added
        np.save(file, np.asarray(vectors.vectors, dtype=np.float32), allow_pickle=False)
    keys_file(path).write_text(
        json.dumps(list(vectors.index_to_key), ensure_ascii=False), encoding="utf-8"
    )


def load_keyed_vectors(path: Path, digest: str | None = None):
    """The gensim `KeyedVectors` the word2vec stage saved (`save_keyed_vectors`); with `digest`
    (the one its descriptor records), refused when they are not those written: bytes changed
    on the disk or in a copy keep the file's size, and numpy loads them without noticing."""
    import numpy as np
    from gensim.models import KeyedVectors

    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no word2vec vectors here; run the word2vec stage (word2vec.enabled = true, "
            'word2vec.input = "pieces")'
        )
    try:
        matrix = np.load(path, allow_pickle=False)
        keys = json.loads(keys_file(path).read_text(encoding="utf-8"))
        words = keys if isinstance(keys, list) and all(isinstance(k, str) for k in keys) else []
        if matrix.ndim != 2 or len(set(words)) != len(matrix):
            raise ValueError(f"{len(set(words))} distinct words for an array of {matrix.shape}")
        vectors = KeyedVectors(matrix.shape[1])
        vectors.add_vectors(words, matrix)
    except (OSError, ValueError, TypeError) as error:  # json's errors are ValueErrors
        raise Word2VecError(
            f"{path}: not readable as word2vec vectors ({type(error).__name__}: {error}); "
            "delete its folder and run the word2vec stage again"
        ) from None
    if digest is not None and vectors_digest(vectors) != digest:
        raise Word2VecError(
            f"{path}: not the vectors written (their digest differs from the one recorded); "
            "delete its folder and run the word2vec stage again"
        )
    return vectors


def embedding_matrix(vectors, tokenizer, dim: int, seed: int) -> PieceEmbedding:
    """Row i = the vector of `tokenizer.piece(i)` (mapped to `dim` if the widths differ); rows
    of pieces without a vector are random (seeded). Logs how many pieces were found."""
    vocab_size = tokenizer.vocab_size
    ids, rows = [], []
    for token_id in range(vocab_size):
        row = vectors.key_to_index.get(tokenizer.piece(token_id))
        if row is not None:
            ids.append(token_id)
            rows.append(row)
    if not ids:
        raise Word2VecError(
            f"none of the tokenizer's {vocab_size} pieces has a word2vec vector: train word2vec "
            'on this tokenizer\'s pieces (word2vec.input = "pieces")'
        )
    if len(ids) < 2 and dim < vectors.vector_size:
        raise Word2VecError(
            f"only {len(ids)} of the tokenizer's {vocab_size} pieces has a word2vec vector: "
            f"too few to map {vectors.vector_size} dimensions to {dim} (PCA needs two); lower "
            f"word2vec.min_count, or set word2vec.vector_size = {dim}"
        )
    generator = torch.Generator().manual_seed(seed)
    found = torch.from_numpy(vectors.vectors[rows]).double()
    found, how = _map_width(found, dim, generator)
    scale = found.square().mean().sqrt()
    if not scale > 0:  # every vector found is zero (or not finite): nothing to scale by
        raise Word2VecError(
            f"the {len(ids)} word2vec vectors of the tokenizer's pieces are all zero or not "
            "finite after mapping them to the model's width; train word2vec on more text"
        )
    matrix = torch.randn(vocab_size, dim, generator=generator, dtype=torch.float64) * scale
    index = torch.tensor(ids)
    matrix[index] = found
    covered = torch.zeros(vocab_size, dtype=torch.bool)
    covered[index] = True
    embedding = PieceEmbedding(matrix.float(), covered)
    missing = vocab_size - len(ids)
    logger.info(
        "word2vec → embeddings: %d of %d pieces have a vector (%.1f%%), %d get random vectors "
        "(seed %d); %d → %d dimensions%s",
        len(ids), vocab_size, 100 * embedding.coverage, missing, seed,
        vectors.vector_size, dim, f" by {how}" if how else "",
    )  # fmt: skip
    text_pieces = [i for i in range(vocab_size) if not BYTE_PIECE.fullmatch(tokenizer.piece(i))]
    text_coverage = float(covered[text_pieces].float().mean()) if text_pieces else 1.0
    if text_coverage < LOW_COVERAGE:
        logger.warning(
            "word2vec → embeddings: only %.1f%% of the non-byte pieces have a vector; were the "
            "vectors trained on this tokenizer's pieces, with a low enough word2vec.min_count?",
            100 * text_coverage,
        )
    return embedding


def _map_width(found: torch.Tensor, dim: int, generator: torch.Generator):
    """(rows, width) → (rows, dim): unchanged, PCA (narrower) or an isometry (wider)."""
    width = found.size(1)
    if dim == width:
        return found, ""
    if dim < width:
        centred = found - found.mean(dim=0)
        _, _, components = torch.linalg.svd(centred, full_matrices=False)
        components = components[:dim]
        largest = components.gather(1, components.abs().argmax(dim=1, keepdim=True))
        projected = centred @ (components * largest.sign()).T
        if projected.size(1) < dim:  # fewer found rows than dimensions: the rest is empty
            projected = nn.functional.pad(projected, (0, dim - projected.size(1)))
        return projected, "PCA"
    gaussian = torch.randn(dim, width, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)  # q: (dim, width), orthonormal columns
    q = q * torch.diagonal(r).sign()  # QR's sign convention off: a uniformly random map
    return found @ q.T, "a random orthonormal map"


def load_piece_vectors(
    config: ModelConfig, path: Path, tokenizer, seed: int, digest: str | None = None
) -> PieceEmbedding:
    """What the train stage passes to `build_model(config, vocab_size, vectors=...matrix)`:
    the word2vec stage's vectors as a matrix of the width `config` takes. A `w2v` model
    reads the vectors as they are, so their size must equal its `vector_size`."""
    vectors = load_keyed_vectors(path, digest)
    if config.kind == "w2v" and vectors.vector_size != config.vector_size:
        raise Word2VecError(
            f"{path}: the word2vec vectors have {vectors.vector_size} dimensions but "
            f"model.vector_size is {config.vector_size}; set model.vector_size = "
            f"{vectors.vector_size} (or word2vec.vector_size = {config.vector_size})"
        )
    return embedding_matrix(vectors, tokenizer, word2vec_width(config), seed)


@torch.no_grad()
def init_token_embedding(embedding: nn.Embedding, vectors: torch.Tensor) -> None:
    """Start a token embedding from word2vec vectors, rescaled by one factor to the RMS of the
    random initialisation it replaces (0.02 for the GPT): angles and relative lengths are kept,
    and with tied embeddings the output head starts with logits as small as a random init's,
    so the first loss stays near ln(vocab). Raw word2vec entries are ~12x larger (RMS 0.24 on
    the bundled Wikipedia excerpt at vector_size 100)."""
    weight = embedding.weight
    if tuple(vectors.shape) != tuple(weight.shape):
        raise Word2VecError(
            f"word2vec init: the vectors are {tuple(vectors.shape)} but the token embedding is "
            f"{tuple(weight.shape)} (vocab_size, n_embd); build them with dim = n_embd"
        )
    vectors = vectors.to(device=weight.device, dtype=torch.float64)
    scale = weight.double().square().mean().sqrt() / vectors.square().mean().sqrt()
    weight.copy_(vectors * scale)
