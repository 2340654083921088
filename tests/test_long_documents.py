"""Plain text too long for one document is cut into pieces of a bounded size."""

from __future__ import annotations

import logging

import pytest

from lm.config import IngestConfig
from lm.text.ingest import iter_input_documents
from lm.text.long_documents import PieceNames, cut_long_documents, utf8_pieces
from lm.text.readers import RawDocument
from lm.text.sources import InputError, resolve_sources
from tests.helpers import prose, warnings_said_by


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
    assert all(9_997 < size <= 10_000 for size in sizes[:-2])  # to the character
    assert abs(sizes[-1] - sizes[-2]) <= 3 and sizes[-1] > 5_000


def test_short_text_markup_and_a_limit_of_zero_are_left_whole():
    text = prose(2, 3000)
    assert _cut(text, 0.01, markup="wikitext") == [RawDocument("book.txt", "book.txt", text,
                                                                "wikitext")]  # fmt: skip
    assert len(_cut(text, 0)) == 1 and len(_cut(text, 1.0)) == 1
    assert len(_cut(text, 0.01)) > 1
    assert IngestConfig(sources=["x"]).max_document_mb == 0.25
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
    rows = [(f"d{n}", "f", "x" * (100 if n % 10 else 7_000), "plain", None) for n in range(300)]
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


def test_the_last_two_pieces_share_what_is_left_so_that_the_last_is_not_a_scrap():
    """A file just over the limit was a full piece and a scrap of a few words, which the
    quality rules then removed (text the uncut file kept)."""
    text = "\n\n".join(prose(n, 60) for n in range(200))
    limit_mb = len(text.encode()) / 2.05 / 1e6  # just under half: three pieces
    sizes = [len(piece.text.encode()) for piece in _cut(text, limit_mb)]
    # A full piece ends at a break in the second half of its share, chosen by the text there.
    assert len(sizes) == 3 and sizes[0] > 0.5 * limit_mb * 1e6, sizes
    assert min(sizes[1:]) > 0.8 * max(sizes[1:]), sizes
    sizes = [len(piece.text.encode()) for piece in _cut(text, len(text.encode()) / 1.02 / 1e6)]
    assert len(sizes) == 2 and min(sizes) > 0.8 * max(sizes), sizes


def test_a_text_that_grows_at_its_end_keeps_all_its_pieces_but_the_last_two():
    """Pieces of equal size moved every cut when text was added, so every piece of a growing
    file (a log, a collection added to) was drawn to a split again on each retrain, and the
    champion's training text landed in val and test."""
    text = "\n\n".join(prose(n, 60) for n in range(300))
    before = _cut(text, 0.01)
    for added in ("\n\nOne more line.", "\n\n" + "\n\n".join(prose(n, 60) for n in range(9))):
        after = _cut(text + added, 0.01)
        assert after[: len(before) - 2] == before[:-2] and len(before) > 10
        assert "".join(piece.text for piece in after) == text + added


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


def _mixed_text(seed: int) -> str:
    """Paragraphs, Windows, Mac and Unix line ends, long lines, accents and 3- and 4-byte
    characters: each kind of place a cut may or may not fall."""
    import random

    rng = random.Random(seed)
    parts = []
    while sum(map(len, parts)) < 60_000:
        kind = rng.randrange(6)
        parts.append(
            prose(rng.randrange(10**6), rng.randint(5, 400)) if kind < 2
            else "長い文書を読む。" * rng.randint(1, 600) if kind == 2
            else "e\u0301🙂" * rng.randint(1, 300) if kind == 3
            else rng.choice(["\n\n", "\r\n", "\r", "\n", "\n\r\n", "\r\r", " "]) * rng.randint(1, 3)
        )  # fmt: skip
    return "".join(parts)


def _read_file(path, max_mb: float, errors: str = "strict") -> list[RawDocument]:
    inputs = resolve_sources(IngestConfig(sources=[str(path)]).sources)
    return list(iter_input_documents(inputs, errors, path.parent / "downloads",
                                     max_document_mb=max_mb))  # fmt: skip


def test_a_text_file_is_cut_as_it_is_read_into_the_pieces_of_its_whole_text(tmp_path, monkeypatch):
    """Read whole before it was cut, a 1 GB file took about 7 GB; read a block at a time, its
    pieces, their names and the line saying so are those of the whole text's cut."""
    import gzip

    from lm.text import readers

    monkeypatch.setattr(readers, "TEXT_READ_BYTES", 997)  # many reads a piece
    for seed in range(12):
        text = _mixed_text(seed)
        book = tmp_path / (f"book{seed}.txt" + (".gz" if seed % 4 == 1 else ""))
        data = (b"\xef\xbb\xbf" if seed % 3 == 0 else b"") + text.encode()
        book.write_bytes(gzip.compress(data) if book.suffix == ".gz" else data)
        for max_mb in (0.001, 0.0037, 0.05, 1.0):
            read = _read_file(book, max_mb)
            whole = _cut(text, max_mb)
            assert [d.text for d in read] == [d.text for d in whole]
            assert [d.source for d in read] == [d.source.replace("book.txt", str(book))
                                                for d in whole]  # fmt: skip
    assert len(_read_file(book, 0.001)) > 40 and len(_read_file(book, 1.0)) == 1


def test_a_long_text_file_is_never_held_whole_while_it_is_cut(tmp_path, monkeypatch):
    """At each piece handed on, the file is read no further than a few pieces ahead (read
    whole, the first piece came after the last byte was read)."""
    from lm.text import readers

    monkeypatch.setattr(readers, "TEXT_READ_BYTES", 1000)
    book = tmp_path / "book.txt"
    book.write_text("\n\n".join(prose(n, 80) for n in range(1500)))  # ~750 kB
    inputs = resolve_sources(IngestConfig(sources=[str(book)]).sources)
    opened = []
    real_open = open

    def recorded_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        if str(path) == str(book):
            opened.append(handle)
        return handle

    monkeypatch.setattr("builtins.open", recorded_open)
    handed_on = 0
    for document in iter_input_documents(inputs, "strict", tmp_path / "d", max_document_mb=0.01):
        handed_on += len(document.text.encode())
        assert opened[0].tell() <= handed_on + 3 * 10_000 + 1000 + 8
    assert handed_on == book.stat().st_size and handed_on > 70 * 10_000


def test_invalid_bytes_in_a_later_piece_are_placed_in_the_file(tmp_path, caplog):
    """By the byte and line of the file, not of the piece (the same words as a file read
    whole), under either setting of `ingest.encoding_errors`."""
    caplog.set_level(logging.WARNING, "lm.text.ingest")
    lines = [prose(n, 30) for n in range(600)]
    for n in (5, 300, 450, 451, 590):
        lines[n] = lines[n][:40] + "\xff" + lines[n][40:]
    data = "\n".join(lines).encode().replace("\xff".encode(), b"\xff")
    book = tmp_path / "book.txt"
    book.write_bytes(data)
    said = {}
    for max_mb in (0, 0.01):
        with pytest.raises(InputError) as error:
            _read_file(book, max_mb)
        caplog.clear()
        read = _read_file(book, max_mb, "replace")
        assert sum(piece.text.count("\ufffd") for piece in read) == 5
        said[max_mb] = (str(error.value), [r.getMessage() for r in caplog.records])
    assert said[0] == said[0.01]
    first, third = data.index(b"\xff"), data.index(b"\xff", data.index(lines[450][:40].encode()))
    assert f"invalid UTF-8 at byte {first} (line 6)" in said[0][0]
    assert said[0][1][2] == f"{book}: invalid UTF-8 at byte {third} (line 451) replaced with U+FFFD"
    assert "in 5 places in all" in said[0][1][3]


def test_sources_that_hold_no_documents_say_their_files_were_skipped(workspace, tmp_path):
    """A binary file and an empty one: "no documents found in the configured sources" read as
    if the sources named nothing, the reasons in warnings lines above it."""
    from lm.text.sources import InputError
    from tasks.ingest import ingest_task

    (tmp_path / "a.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "b.txt").write_bytes(b"")
    with warnings_said_by("lm.text.readers") as warnings, pytest.raises(InputError) as error:
        ingest_task.fn(IngestConfig(sources=[str(tmp_path)]))
    assert str(error.value) == (
        f"{tmp_path}/a.bin, {tmp_path}/b.txt: no documents found in the configured sources: "
        "each file was empty or skipped, or held only empty texts (the warnings above say why)"
    )
    assert any("a.bin: skipped, it looks like a binary file" in line for line in warnings)


def test_a_novel_in_one_file_is_kept_by_the_default_quality_rules(workspace, tmp_path):
    """Cut at 8 MB (or not at all), a novel's pieces held over 100,000 words and were removed
    as too_many_words, every word of a one-file corpus; at the default they are kept, and a
    limit that loses them says what to set."""
    from flows.pipeline import require_kept_documents, warn_of_long_texts_removed
    from lm.config import CleanConfig, PipelineConfig, SplitConfig
    from tasks.clean import clean_task
    from tasks.ingest import ingest_task

    novel = tmp_path / "novel.txt"
    novel.write_text("\n\n".join(prose(n, 90) for n in range(1400)))  # ~130,000 words
    said = {}
    for max_mb in (None, 0, 8):
        ingest = IngestConfig(sources=[str(novel)], **({} if max_mb is None else
                                                       {"max_document_mb": max_mb}))  # fmt: skip
        corpus = clean_task.fn(ingest_task.fn(ingest), CleanConfig(), SplitConfig())
        with warnings_said_by("lm.pipeline") as warnings:
            warn_of_long_texts_removed(corpus.stats, PipelineConfig(ingest=ingest))
        said[max_mb] = (corpus.stats["kept"], corpus.stats["removed"]["too_many_words"],
                        warnings)  # fmt: skip
    assert said[None][0] >= 3 and said[None][1:] == (0, [])
    assert said[0] == (0, 1, ["clean: 1 document removed as longer than clean.quality.max_words "
                              "(100,000 words); plain text is never cut (ingest.max_document_mb "
                              "= 0): set it to 0.25 to cut long texts into documents the rule "
                              "keeps"])  # fmt: skip
    with pytest.raises(
        InputError,
        match=r"removed by: too_many_words 1\); a text over clean\.quality\.max_words is "
        r"removed whole: cut long texts smaller \(ingest\.max_document_mb\) or raise "
        r"clean\.quality\.max_words$",
    ):
        require_kept_documents(corpus, SplitConfig(), trains_models=True)
    assert said[8][:2] == (0, 1) and said[8][2][0].endswith(
        "ingest.max_document_mb = 8 cuts plain text into pieces of up to about 1,333,333 "
        "English words: set it to 0.25 to keep them"
    )


def test_a_growing_text_keeps_its_pieces_but_the_last_two_whatever_its_paragraphs():
    """Where the first of the last two ended at a paragraph break early in its share, more
    than a piece was left after it and the text ended in three pieces (a full-size cut then
    moved all three when text was added)."""
    import random

    for seed in range(40):
        rng = random.Random(seed)
        paragraphs, size = [], rng.randint(3000, 12000)
        while sum(map(len, paragraphs)) < size:
            paragraphs.append(prose(rng.randrange(10**6), rng.randint(2, 40)) + "\n\n")
        text = "".join(paragraphs)
        before = _cut(text, 0.001)
        after = _cut(text + " more words" * rng.randint(1, 300), 0.001)
        assert after[: len(before) - 2] == before[:-2], seed
    text = "x " * 249 + "\n\n" + "y " * 700  # 1900 bytes: a break at 500, spaces after it
    assert [len(piece.text) for piece in _cut(text, 0.001)] == [950, 950]


def test_a_run_of_invalid_continuation_bytes_is_cut_within_the_limit():
    """Backing off to a character's first byte crossed a whole run of stray continuation bytes
    (`encoding_errors = "replace"`): a 499-byte piece, then one as long as the run and the
    megabyte read ahead of it (3 MB of U+FFFD under a 0.25 MB limit)."""
    from lm.text.long_documents import utf8_pieces

    data = b"word " * 100 + b"\x80" * 30_000 + b" end" * 100
    pieces = [piece for _, piece in utf8_pieces([data[i : i + 997] for i in
                                                 range(0, len(data), 997)], 1000)]  # fmt: skip
    assert b"".join(pieces) == data
    assert max(map(len, pieces)) <= 1000 and min(map(len, pieces)) > 500, list(map(len, pieces))


def test_a_piece_never_starts_with_what_nfkc_joins_to_the_character_before():
    """Halfwidth katakana with its voiced mark (U+FF9E, a letter until NFKC makes it U+3099)
    was cut between the two: normalized, the pieces held 7 characters the uncut text had not."""
    import unicodedata

    for text in ("ｶﾞ" * 2000, "가ㄳ" * 1500):
        pieces = _cut(text, 0.001)
        assert len(pieces) > 4 and "".join(piece.text for piece in pieces) == text
        assert "".join(unicodedata.normalize("NFKC", piece.text) for piece in pieces) == (
            unicodedata.normalize("NFKC", text)
        )


def test_a_utf8_bom_split_between_gzip_members_is_left_out_of_the_pieces(tmp_path):
    """Peeked, the mark was seen only where the first gzip member held all three of its bytes:
    else U+FEFF began the first piece (read whole, the text never held it)."""
    import gzip

    book = tmp_path / "book.txt.gz"
    text = "\n\n".join(prose(n, 40) for n in range(40))
    book.write_bytes(gzip.compress(b"\xef") + gzip.compress(b"\xbb\xbf" + text.encode()))
    pieces = _read_file(book, 0.001)
    assert len(pieces) > 3 and "".join(piece.text for piece in pieces) == text


def test_the_first_few_cut_texts_are_named_and_the_rest_summed_up(tmp_path, caplog):
    """At 0.25 MB, a JSON Lines file of books logged a line for each of its thousands."""
    import json

    caplog.set_level(logging.INFO, "lm.text.ingest")
    books = tmp_path / "books.jsonl"
    texts = ["\n\n".join(prose(100 * n + k, 60) for k in range(8)) for n in range(5)]
    books.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    documents = _read_file(books, 0.001)
    said = [r.getMessage() for r in caplog.records if "cut into" in r.getMessage()]
    assert [line.split(":")[1] for line in said[:3]] == ["1", "2", "3"]  # books.jsonl:LINE
    # A piece of a record is named by its text's line after an @ (a second colon reads as a
    # column): books.jsonl:1@1, books.jsonl:1@9 (line 9 of the text of line 1's record).
    firsts = [document.source for document in documents if document.source.endswith("@1")]
    assert firsts == [f"{books}:{n}@1" for n in range(1, 6)]
    assert {d.source.split("@")[0] for d in documents} == {f"{books}:{n}" for n in range(1, 6)}
    size = sum(len(text.encode()) for text in texts) / 1e6
    assert len(said) == 4 and said[3] == (
        f"ingest: 5 texts over 0.001 MB ({size:,.2f} MB), cut into {len(documents)} documents "
        "(the first 3 named above; ingest.max_document_mb)"
    )


def test_a_stretch_of_blank_is_no_document_and_the_pieces_after_it_keep_their_lines(tmp_path):
    """A blank text was no document read whole; cut, its pieces were (a blank file of 10 MB
    became 40 documents), and so was a blank stretch inside a text."""
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n" * 2000)
    assert _read_file(blank, 0.001) == [] == _cut(" \n" * 2000, 0.001)
    text = "\n\n".join(prose(n, 60) for n in range(5)) + "\n" * 3000 + prose(9, 300)
    book = tmp_path / "book.txt"
    book.write_text(text)
    names = PieceNames(str(book))
    every = [(names.next_name(t.decode()), t.decode()) for _, t in utf8_pieces([text.encode()],
                                                                               1000)]  # fmt: skip
    assert sum(piece.isspace() for _, piece in every) >= 2  # the stretch is pieces of its own
    pieces = _read_file(book, 0.001)
    assert [(p.source, p.text) for p in pieces] == [(n, t) for n, t in every if not t.isspace()]


def test_too_many_words_advice_never_names_a_limit_under_a_kilobyte():
    from flows.pipeline import warn_of_long_texts_removed
    from lm.config import PipelineConfig

    settings = PipelineConfig(ingest=IngestConfig(sources=["x"]),
                              clean={"quality": {"max_words": 100, "min_words": 5}})  # fmt: skip
    with warnings_said_by("lm.pipeline") as warnings:
        warn_of_long_texts_removed({"removed": {"too_many_words": 2}}, settings)
    assert warnings == ["clean: 2 documents removed as longer than clean.quality.max_words (100 "
                        "words); ingest.max_document_mb = 0.25 cuts plain text into pieces of up "
                        "to about 41,667 English words: set it to 0.001 to keep them"]  # fmt: skip


def test_an_edit_or_a_preface_moves_only_the_piece_it_falls_in():
    """Cut at the last paragraph break of each share, a paragraph added early in a book moved
    every later cut: every piece got a new doc_id (and split), and a second edition with a
    preface overlapped each piece of the first too little to be a near duplicate, so the book
    trained twice and its text was also held out."""
    text = "\n\n".join(prose(n, 20 + n % 50) for n in range(3000))
    before = [piece.text for piece in _cut(text, 0.01)]
    assert len(before) > 20
    for added in ("One more paragraph. " * 40, "A preface. " * 3000):
        at = text.index("\n\n", len(text) // 10) + 2
        after = [piece.text for piece in _cut(text[:at] + added + "\n\n" + text[at:], 0.01)]
        assert len(set(before) - set(after)) <= 6, (len(before), len(set(before) - set(after)))
    crlf = [piece.text.replace("\r\n", "\n") for piece in _cut(text.replace("\n", "\r\n"), 0.01)]
    assert len(set(before) - set(crlf)) <= 6


def test_the_last_break_in_reach_is_weighed_like_the_others():
    """`find(mark, lowest, last + 1)` never found a mark of two bytes at `last`: the last
    paragraph break in reach was taken only where it was the only one, so which break ended a
    piece depended on its place, not only on the text before it."""
    import random
    import zlib

    from lm.text.long_documents import _anchor

    def least_crc(utf8: bytes, lowest: int, last: int) -> int:
        ends = [i + 2 for i in range(lowest, last + 1) if utf8.startswith(b"\n\n", i)]
        return min(ends, key=lambda end: (zlib.crc32(utf8[max(0, end - 128) : end][-64:]), end))

    rng = random.Random(0)
    for _ in range(200):
        utf8 = "\n\n".join(prose(rng.randrange(10**6), rng.randint(2, 30))
                            for _ in range(60)).encode()  # fmt: skip
        last = utf8.rfind(b"\n\n", 500, 1000)
        assert _anchor(utf8, b"\n\n", 500, last) == least_crc(utf8, 500, last)


def test_an_invalid_byte_in_a_later_piece_of_a_file_with_a_bom_is_placed_by_the_file(tmp_path):
    """The byte offset of a piece's error counts the UTF-8 BOM, as the uncut file's does."""
    data = ("word " * 30 + "\n").encode() * 100
    at = len(data) - 500
    book = tmp_path / "book.txt"
    book.write_bytes(b"\xef\xbb\xbf" + data[:at] + b"\xff" + data[at:])
    for max_mb in (0, 0.001):
        with pytest.raises(InputError, match=f"at byte {at + 3} \\(line 97\\)"):
            _read_file(book, max_mb)


def test_a_text_up_to_twice_the_limit_ends_in_two_pieces_whatever_its_characters():
    """Where no break lay in reach, the first of the last two ended at half of what was left,
    stepped back off a character, a \\r\\n or an accent: more than a piece was left, and the
    text ended in three pieces, all cut anew when it grew."""
    from lm.text.long_documents import utf8_pieces

    t = ("a" * 600 + "\n" + "a" * 398 + "é" + "b" * 999).encode()  # é across the half
    assert [len(piece) for _, piece in utf8_pieces([t], 1000)] == [1001, 999]
    for size in range(1001, 2001, 7):
        for unit in ("中", "e\u0301", "ab\r\n", "é"):
            text = (unit * size)[: size // len(unit.encode()) * len(unit)].encode()
            if 1000 < len(text) <= 2000:
                pieces = [piece for _, piece in utf8_pieces([text], 1000)]
                assert len(pieces) == 2 and b"".join(pieces) == text, (unit, size)


def test_a_books_pieces_are_held_out_together_and_one_book_alone_says_what_to_set(
    workspace, tmp_path
):
    """The corpus names the text each piece was cut from (`part_of`), and every piece of a
    book is in its first piece's split; a corpus of one book cannot be split by book, and
    says what splits it."""
    import json

    import pyarrow.parquet as pq

    from flows.pipeline import require_kept_documents
    from lm.config import CleanConfig, SplitConfig
    from storage.corpus import DOCUMENTS_FILE
    from tasks.clean import clean_task
    from tasks.ingest import ingest_task

    books = tmp_path / "books"
    books.mkdir()
    for book in range(12):
        (books / f"book{book:02}.txt").write_text("\n\n".join(prose(book * 50 + n, 90)
                                                              for n in range(50)))  # fmt: skip
    records = [{"text": "\n\n".join(prose(1000 + n, 90) for n in range(50))}, {"text": "short"}]
    (books / "more.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    split = SplitConfig(val=0.25, test=0.25)
    ingest = IngestConfig(sources=[str(books)], max_document_mb=0.01)
    corpus = clean_task.fn(ingest_task.fn(ingest), CleanConfig(), split)
    rows = pq.read_table(workspace.resolve(corpus.path) / DOCUMENTS_FILE).to_pylist()
    splits_of: dict[str, set[str]] = {}
    for row in rows:
        if row["source"] == f"{books / 'more.jsonl'}:2":
            assert row["part_of"] is None  # read whole
        else:
            assert row["part_of"] in (row["source_file"], f"{books / 'more.jsonl'}:1")
            splits_of.setdefault(row["part_of"], set()).add(row["split"])
    assert len(splits_of) == 13 and all(len(splits) == 1 for splits in splits_of.values())
    held_out = [part for part, splits in splits_of.items() if splits != {"train"}]
    assert 0 < len(held_out) < 13
    assert corpus.stats["texts_cut"] == 13 and corpus.stats["pieces"] == len(rows) - 1

    one = IngestConfig(sources=[str(books / "book00.txt")], max_document_mb=0.003)
    alone = clean_task.fn(ingest_task.fn(one), CleanConfig(), SplitConfig())
    assert set(alone.stats["split_documents"]) == {"train"}
    pieces = alone.stats["pieces"]
    with pytest.raises(
        InputError,
        match=rf"none is in the val split \(train {pieces}\).*; "
        rf"{pieces} of the documents are pieces of 1 long text, each text drawn "
        r'to one split whole \(split.unit = "text"\): split.unit = "piece"',
    ):
        require_kept_documents(alone, SplitConfig(), trains_models=True)
    by_piece = SplitConfig(unit="piece", val=0.3)
    drawn = clean_task.fn(ingest_task.fn(one), CleanConfig(), by_piece)
    assert drawn.stats["split_documents"]["val"] > 0
    require_kept_documents(drawn, by_piece, trains_models=True)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("truncated", r"\([0-9,]+ bytes when the sources were listed, 1,000 now\)"),
        # Its size the same, it was "(58,000 bytes when the sources were listed, 58,000 now)".
        ("touched", r"\(modified since the sources were listed, at the same size\)"),
    ],
)
def test_a_file_that_changes_while_it_is_read_is_an_error_naming_it(tmp_path, change, said):
    """Truncated midway (a copy being replaced, a log rotated), a file gave part of its text;
    cached under the size it was listed with, that part would be served again for the whole."""
    import os

    book = tmp_path / "book.txt"
    book.write_text("\n\n".join(prose(n, 60) for n in range(300)))
    inputs = resolve_sources(IngestConfig(sources=[str(book)]).sources)
    documents = iter_input_documents(inputs, "strict", tmp_path / "downloads",
                                     max_document_mb=0.02)  # fmt: skip
    next(documents)
    if change == "truncated":
        with open(book, "r+b") as out:
            out.truncate(1000)
    else:
        stat = book.stat()
        os.utime(book, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(InputError, match=r"book.txt: changed while it was read " + said):
        list(documents)


def test_a_text_under_the_limit_in_characters_but_over_it_in_bytes_is_cut():
    """The limit is in UTF-8 bytes: 6,000 characters of Greek are 12,000 bytes, over a limit
    of 10 kB, though fewer characters than it."""
    text = ("αβγδε " * 1000)[:6000]
    pieces = _cut(text, 0.01)
    assert len(pieces) == 2 and "".join(piece.text for piece in pieces) == text
    assert all(len(piece.text.encode()) <= 10_000 for piece in pieces)


def test_a_text_of_exactly_the_limit_stays_one_document_under_its_own_name():
    text = "a" * 9_999 + "\n"  # 10,000 bytes: at the limit, not over it
    assert _cut(text, 0.01) == [RawDocument("book.txt", "book.txt", text, "plain")]
    assert [piece.part_of for piece in _cut(text + "b", 0.01)] == ["book.txt", "book.txt"]


def test_pieces_of_one_long_line_are_named_by_the_column_each_starts_at():
    names = PieceNames("book.txt")
    assert [names.next_name(text) for text in ("abc", "de", "fgh\nij", "k")] == [
        "book.txt:1", "book.txt:1+3", "book.txt:1+5", "book.txt:2+2",
    ]  # fmt: skip
