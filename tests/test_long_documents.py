"""Plain text too long for one document is cut into pieces of a bounded size."""

from __future__ import annotations

import logging

import pytest

from lm.config import IngestConfig
from lm.text.ingest import iter_input_documents
from lm.text.long_documents import cut_long_documents
from lm.text.readers import RawDocument
from lm.text.sources import resolve_sources
from tests.helpers import prose


def _cut(text: str, max_mb: float, markup: str = "plain") -> list[RawDocument]:
    return list(cut_long_documents([RawDocument("book.txt", "book.txt", text, markup)], max_mb))


def test_a_long_text_is_cut_at_paragraph_breaks_into_pieces_that_make_it_up_exactly():
    paragraphs = [prose(n, 40 + n % 30) for n in range(200)]
    text = "\n\n".join(paragraphs) + "\n"
    pieces = _cut(text, 0.01)  # 10 kB
    assert "".join(piece.text for piece in pieces) == text
    assert len(pieces) == pytest.approx(len(text.encode()) / 7_500, rel=0.35)
    assert all(len(piece.text.encode()) <= 10_000 for piece in pieces)
    assert all(piece.text.endswith("\n\n") for piece in pieces[:-1])  # never mid-paragraph
    assert {piece.source_file for piece in pieces} == {"book.txt"}
    # Named by the line each starts on, as a line of a one-document-per-line file.
    lines = [int(piece.source.removeprefix("book.txt:")) for piece in pieces]
    assert lines == [1 + sum(p.text.count("\n") for p in pieces[:n]) for n in range(len(pieces))]
    assert text.splitlines()[lines[1] - 1] == pieces[1].text.splitlines()[0]


def test_without_paragraphs_a_piece_ends_at_a_line_a_space_or_between_characters():
    lines = "\n".join(prose(n, 30) for n in range(400))
    assert all(piece.text.endswith("\n") for piece in _cut(lines, 0.01)[:-1])
    one_line = prose(1, 5000)
    pieces = _cut(one_line, 0.01)
    assert len(pieces) > 2 and all(piece.text.endswith(" ") for piece in pieces[:-1])
    assert "".join(piece.text for piece in pieces) == one_line
    unspaced = "長い文書を読む。" * 2000  # 3 bytes a character, no space, no line end
    pieces = _cut(unspaced, 0.01)
    assert "".join(piece.text for piece in pieces) == unspaced
    sizes = [len(piece.text.encode()) for piece in pieces]
    assert max(sizes) <= 10_000 and max(sizes) - min(sizes) <= 6  # equal, to the character


def test_short_text_markup_and_a_limit_of_zero_are_left_whole():
    text = prose(2, 3000)
    assert _cut(text, 0.01, markup="wikitext") == [RawDocument("book.txt", "book.txt", text,
                                                                "wikitext")]  # fmt: skip
    assert len(_cut(text, 0)) == 1 and len(_cut(text, 1.0)) == 1
    assert len(_cut(text, 0.01)) > 1
    assert IngestConfig(sources=["x"]).max_document_mb == 8.0
    with pytest.raises(ValueError, match=r"must be at least 0.001 \(1 kB\), or 0 never to cut"):
        IngestConfig(sources=["x"], max_document_mb=1e-7)  # a limit of 0 bytes: never cut


def test_a_text_file_over_the_limit_is_read_as_several_documents(tmp_path, caplog):
    caplog.set_level(logging.INFO, "lm.text.ingest")
    book = tmp_path / "book.txt"
    book.write_text("\n\n".join(prose(n, 60) for n in range(300)))
    inputs = resolve_sources(IngestConfig(sources=[str(book)]).sources)
    whole = list(iter_input_documents(inputs, "strict", tmp_path / "downloads"))
    cut = list(iter_input_documents(inputs, "strict", tmp_path / "downloads",
                                    max_document_mb=0.02))  # fmt: skip
    assert len(whole) == 1 and len(cut) > 3
    assert "".join(document.text for document in cut) == whole[0].text
    assert cut[0].source == f"{whole[0].source}:1" and cut[1].source.startswith(f"{book}:")
    said = [r.getMessage() for r in caplog.records if "cut into" in r.getMessage()]
    assert len(said) == 1 and said[0] == (
        f"{book}: {len(whole[0].text) / 1e6:.2f} MB of text, cut into {len(cut)} documents of "
        "at most 0.02 MB (ingest.max_document_mb)"
    )


def test_clean_batches_and_row_groups_are_bounded_by_text_as_well_as_by_count(
    tmp_path, monkeypatch
):
    """64 documents a batch and 2000 a row group held gigabytes of book-sized documents: a
    batch also ends at BATCH_CHARS, a row group at ROW_GROUP_CHARS (a longer document alone),
    and every row is read back once, in order."""
    import pyarrow.parquet as pq

    from storage import corpus
    from storage.corpus import RAW_SCHEMA, DocumentWriter, read_raw_rows

    monkeypatch.setattr(corpus, "ROW_GROUP_CHARS", 20_000)
    monkeypatch.setattr(corpus, "BATCH_CHARS", 5_000)
    rows = [(f"d{n}", "f", "x" * (100 if n % 10 else 7_000), "plain") for n in range(300)]
    path = tmp_path / "raw.parquet"
    with DocumentWriter(path, RAW_SCHEMA, row_group_rows=2000) as writer:
        for row in rows:
            writer.write(dict(zip(RAW_SCHEMA.names, row, strict=True)))
    metadata = pq.ParquetFile(path).metadata
    groups = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
    assert len(groups) > 5 and max(groups) <= 30 and sum(groups) == 300
    batches = list(read_raw_rows(path, 0, 300, batch_docs=64))
    assert [row for batch in batches for row in batch] == rows
    assert all(sum(len(row[2]) for row in batch[:-1]) < 5_000 for batch in batches)
    assert max(len(batch) for batch in batches) < 64 and len(batches) >= 30


def test_encoding_a_few_megabytes_at_a_time_gives_the_ids_of_encoding_all_at_once(monkeypatch):
    from lm import tokenizer as tokenizers
    from lm.config import TokenizerConfig
    from lm.tokenizer import encoded_documents, train_tokenizer

    texts = [prose(n, 20 + 37 * (n % 5)) for n in range(60)]
    model = train_tokenizer(texts, TokenizerConfig(kind="char"))
    monkeypatch.setattr(tokenizers, "ENCODE_BATCH_CHARS", 2_000)
    calls = []
    encode_batch = type(model).encode_batch

    def counted(self, batch):
        calls.append(len(batch))
        return encode_batch(self, batch)

    monkeypatch.setattr(type(model), "encode_batch", counted)
    assert list(encoded_documents(model, texts, ["train"] * 60)) == encode_batch(model, texts)
    assert len(calls) > 10 and sum(calls) == 60


def test_pieces_of_one_line_have_names_of_their_own_and_mac_lines_count():
    """A piece that starts inside a line is named by its column too (a long line's pieces were
    all `book.txt:1`); a carriage return alone ends a line and a paragraph, as readers take it;
    a piece never starts with an accent that normalization would join to the character before."""
    one_line = prose(1, 5000)
    names = [piece.source for piece in _cut(one_line, 0.01)]
    assert len(set(names)) == len(names) and names[0] == "book.txt:1"
    assert names[1] == f"book.txt:1+{len(_cut(one_line, 0.01)[0].text)}"
    mac = "\r\r".join(prose(n, 40) for n in range(200))
    pieces = _cut(mac, 0.01)
    assert all(piece.text.endswith("\r\r") for piece in pieces[:-1])
    lines = [1 + sum(q.text.count("\r") for q in pieces[:n]) for n in range(len(pieces))]
    assert [p.source for p in pieces] == [f"book.txt:{line}" for line in lines]
    accented = "e\u0301" * 30000
    assert not any(piece.text.startswith("\u0301") for piece in _cut(accented, 0.01))
    assert "".join(piece.text for piece in _cut(accented, 0.01)) == accented


def test_pieces_are_about_equal_so_that_the_last_is_not_a_scrap():
    """A file just over the limit was a full piece and a scrap of a few words, which the
    quality rules then removed (text the uncut file kept)."""
    text = "\n\n".join(prose(n, 60) for n in range(200))
    limit_mb = len(text.encode()) / 2.05 / 1e6  # just under half: three pieces
    sizes = [len(piece.text.encode()) for piece in _cut(text, limit_mb)]
    assert len(sizes) == 3 and min(sizes) > 0.8 * max(sizes), sizes


def test_encode_reads_a_few_megabytes_of_corpus_at_a_time_across_row_groups(tmp_path, monkeypatch):
    """`ParquetFile.iter_batches(256)` joins row groups: 256 documents of up to 8 MB at once,
    however small the row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flows.encode_flow import read_kept_rows
    from lm.text.clean import RowSlice
    from storage import corpus
    from tasks.encode import _iter_kept_texts

    monkeypatch.setattr(corpus, "BATCH_CHARS", 5_000)
    texts = [f"{n} " + "x" * (100 if n % 10 else 7_000) for n in range(300)]
    table = pa.table({"text": texts, "split": ["train"] * 300, "keep": [n % 7 > 0 for n in
                                                                       range(300)]})  # fmt: skip
    pq.write_table(table, tmp_path / "corpus.parquet", row_group_size=40)
    kept = [text for n, text in enumerate(texts) if n % 7]
    for batches in (
        [batch for batch, _ in read_kept_rows(tmp_path / "corpus.parquet", RowSlice(0, 0, 300))],
        list(_iter_kept_texts(tmp_path / "corpus.parquet")),
    ):
        assert [text for batch in batches for text in batch] == kept
        assert all(len(batch) == 1 or sum(map(len, batch)) < 5_000 + 7_010 for batch in batches)
        assert max(len(batch) for batch in batches) < 60


def test_a_cut_never_falls_between_the_two_bytes_of_a_windows_line_end():
    """Text without spaces whose only line end in reach is a \r\n at the limit: the piece
    ended in a lone \r, and every later piece was named a line too far."""
    text = "\r\n".join(["中" * 333] * 3 + ["中" * 332])
    pieces = _cut(text, 0.001)
    assert "".join(piece.text for piece in pieces) == text
    assert not any(piece.text.endswith("\r") for piece in pieces)
    starts = [sum(len(p.text) for p in pieces[:n]) for n in range(len(pieces))]
    for piece, start in zip(pieces, starts, strict=True):  # each named by where it starts
        line = text.count("\r\n", 0, start) + 1
        column = start - (text.rfind("\n", 0, start) + 1)
        assert piece.source == f"book.txt:{line}" + (f"+{column}" if column else "")
