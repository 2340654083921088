"""How a stage's cache key, or a content digest, is shown to a person: short, yet still naming
the folder it is in."""

from __future__ import annotations


def short_key(key: str) -> str:
    """`key` as log lines and tables name it: its stage and the first 12 characters of its
    digest (`key[:12]` left "word2vec-vec" of a vectors key, "evaluate-ceb" of a scores key);
    a bare digest (a corpus's sha256) is its first 12 characters."""
    stage, _, digest = key.rpartition("-")
    return f"{stage}-{digest[:12]}" if stage else key[:12]
