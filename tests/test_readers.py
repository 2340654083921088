"""Ingest readers: every supported format, and a clear error or warning for each bad input."""

from __future__ import annotations

import bz2
import gzip
import http.server
import io
import json
import logging
import re
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lm.config import SourceConfig
from lm.text.ingest import iter_input_documents
from lm.text.sources import InputError, fingerprint_inputs, resolve_sources
from tests.helpers import prose, serving_busy_once, wiki_page, write_wiki_dump


def read(tmp_path: Path, *sources: SourceConfig | str, errors: str = "strict"):
    specs = [SourceConfig(path=s) if isinstance(s, str) else s for s in sources]
    docs = iter_input_documents(resolve_sources(specs), errors, tmp_path / "downloads", 5.0)
    return list(docs)


def test_plain_text_and_markdown_files_are_one_document_each(tmp_path):
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "b.md").write_text("# Title\n\nsecond document")
    docs = read(tmp_path, str(tmp_path / "a.txt"), str(tmp_path / "b.md"))
    assert [d.text for d in docs] == ["first document", "# Title\n\nsecond document"]
    assert docs[0].source == str(tmp_path / "a.txt")


def test_folder_is_read_recursively_in_sorted_order_skipping_hidden_files(tmp_path):
    (tmp_path / "z.txt").write_text("zed")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("nested")
    (tmp_path / ".hidden").write_text("secret")
    docs = read(tmp_path, str(tmp_path))
    assert [d.text for d in docs] == ["nested", "zed"]


def test_recursive_glob_matches_files_at_any_depth(tmp_path):
    (tmp_path / "one" / "two").mkdir(parents=True)
    (tmp_path / "one" / "two" / "deep.txt").write_text("deep")
    (tmp_path / "top.txt").write_text("top")
    (tmp_path / "skip.md").write_text("not matched")
    docs = read(tmp_path, str(tmp_path / "**" / "*.txt"))
    assert sorted(d.text for d in docs) == ["deep", "top"]


def test_stars_glued_to_a_name_match_within_one_folder_as_one_star(tmp_path):
    (tmp_path / "data" / "deeper").mkdir(parents=True)
    (tmp_path / "data" / "a.txt").write_text("alpha")
    (tmp_path / "data" / "deeper" / "b.txt").write_text("beta")
    for pattern in ("**.txt", "a**", "***/*.txt"):
        docs = read(tmp_path, str(tmp_path / "data" / pattern))
        expected = ["beta"] if pattern.startswith("***") else ["alpha"]
        assert sorted(d.text for d in docs if d.text) == expected, pattern


def test_a_recursive_glob_reads_each_file_once_and_never_follows_a_linked_folder(tmp_path, caplog):
    # Links to the folder itself and to its parent: glob.glob's `**` followed them, reading
    # every file again at each level of `x/x/x/...` (and listing without end with two links).
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("alpha")
    (data / "sub" / "b.txt").write_text("beta")
    (data / ".cache").mkdir()
    (data / ".cache" / "c.txt").write_text("hidden")
    (data / "x").symlink_to(".")
    (data / "y").symlink_to(".")
    (data / "sub" / "up").symlink_to("..")
    docs = read(tmp_path, str(data / "**" / "*.txt"))
    assert sorted(d.text for d in docs) == ["alpha", "beta"]
    assert sorted(d.text for d in read(tmp_path, str(data / "**"))) == ["alpha", "beta"]
    # A name with a leading dot matches where the pattern spells one, as in a shell.
    assert [d.text for d in read(tmp_path, str(data / ".*" / "*.txt"))] == ["hidden"]
    # A folder source skips the links too, and says so (once, however often it is resolved).
    with caplog.at_level(logging.WARNING, logger="lm.text.sources"):
        assert [d.text for d in read(tmp_path, str(data))] == ["alpha", "beta"]
        resolve_sources([SourceConfig(path=str(data))])
    warnings = [r.getMessage() for r in caplog.records if "not followed" in r.getMessage()]
    assert len(warnings) == 1 and str(data / "x") in warnings[0] and "sub/up" in warnings[0]


def test_what_is_not_a_file_in_a_folder_or_a_glob_is_named_for_what_it_is(tmp_path, caplog):
    """A link to nothing was named; a named pipe, a socket or a looping link was dropped in
    silence (or called a link whose target is gone)."""
    import os
    import socket

    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha")
    (folder / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    (folder / "loop.txt").symlink_to("loop.txt")
    os.mkfifo(folder / "pipe.txt")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(folder / "sock.txt"))
        for source in (folder, folder / "*.txt"):
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="lm.text.sources"):
                assert [d.text for d in read(tmp_path, str(source))] == ["alpha"]
            said = [r.getMessage() for r in caplog.records if "not a file" in r.getMessage()]
            assert said == [
                f"{source}: skipped what is not a file to read: {folder / 'gone.txt'} (a link "
                f"to {tmp_path / 'nowhere.txt'}, which is gone), {folder / 'loop.txt'} (a link "
                f"that loops back to itself), {folder / 'pipe.txt'} (a named pipe (FIFO)) and "
                "1 more"
            ]


def test_a_file_gone_between_its_folder_s_listing_and_its_check_is_left_out_quietly(
    tmp_path, monkeypatch, caplog
):
    """A writer renaming its temporary file as the folder was read: the name listed, then
    gone, was asked what it is and raised FileNotFoundError (a traceback for a whole run)."""
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha")
    is_file = Path.is_file

    def renamed_meanwhile(path):
        if path.name == "part.tmp.txt":
            path.unlink(missing_ok=True)
        return is_file(path)

    monkeypatch.setattr(Path, "is_file", renamed_meanwhile)
    for source in (folder, folder / "*.txt"):
        (folder / "part.tmp.txt").write_text("being renamed")
        with caplog.at_level(logging.WARNING, logger="lm.text.sources"):
            found = resolve_sources([SourceConfig(path=str(source))])
        assert [item.path.name for item in found] == ["a.txt"]
    assert "not a file" not in caplog.text


def test_a_linked_file_from_outside_a_folder_is_read_with_a_warning_naming_its_target(
    tmp_path, caplog
):
    # A folder from someone else could link `~/.ssh/id_rsa` into a corpus without a word.
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key.txt").write_text("SECRET")
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("alpha")
    (tmp_path / "d" / "notes.txt").symlink_to(tmp_path / "secret" / "key.txt")
    (tmp_path / "d" / "sub" / "again.txt").symlink_to("../a.txt")  # inside: no warning
    with caplog.at_level(logging.WARNING, logger="lm.text.sources"):
        assert sorted(d.text for d in read(tmp_path, str(tmp_path / "d"))) == ["SECRET", "alpha"]
    said = [r.getMessage() for r in caplog.records if "from outside" in r.getMessage()]
    assert said == [
        f"{tmp_path / 'd'}: reading linked files from outside it: "
        f"{tmp_path / 'd' / 'notes.txt'} -> {tmp_path / 'secret' / 'key.txt'}"
    ]


def test_a_file_that_two_sources_reach_is_read_once_with_a_warning(tmp_path, caplog):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("alpha")
    (tmp_path / "docs" / "b.txt").write_text("beta")
    (tmp_path / "link.txt").symlink_to(tmp_path / "docs" / "b.txt")
    listed = [str(tmp_path / "docs" / "a.txt"), str(tmp_path / "docs"), str(tmp_path / "link.txt")]
    with caplog.at_level(logging.WARNING, logger="lm.text.sources"):
        docs = read(tmp_path, *listed)
    assert [d.text for d in docs] == ["alpha", "beta"]
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"also reached by source {str(tmp_path / 'docs')!r}" in said
    assert f"also reached by source {str(tmp_path / 'link.txt')!r}" in said


def test_many_files_two_sources_reach_are_one_warning_not_one_each(tmp_path, caplog):
    (tmp_path / "many").mkdir()
    for index in range(50):
        (tmp_path / "many" / f"{index:02d}.txt").write_text(f"text {index}")
    with caplog.at_level(logging.WARNING, logger="lm.text.sources"):
        docs = read(tmp_path, str(tmp_path / "many"), str(tmp_path / "many" / "*.txt"))
    assert len(docs) == 50
    [said] = [r.getMessage() for r in caplog.records if "also reached" in r.getMessage()]
    assert said.startswith(f"50 files ({tmp_path / 'many' / '00.txt'}, ")
    assert said.endswith(f"also reached by source {str(tmp_path / 'many' / '*.txt')!r}; read "
                         f"once, as source {str(tmp_path / 'many')!r} says")  # fmt: skip


def test_a_file_that_two_sources_read_differently_is_read_under_each(tmp_path, caplog):
    (tmp_path / "qa.csv").write_text("question,answer\nwhy?,because\n")
    listed = [SourceConfig(path=str(tmp_path / "qa.csv"), text_field=field)
              for field in ("question", "answer")]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="lm.text.sources"):
        docs = read(tmp_path, *listed)
    assert [d.text for d in docs] == ["why?", "because"]
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "whose settings differ (text_field); read under each" in said
    # A file named with its own settings is read so, not also as the folder around it says.
    (tmp_path / "names").mkdir()
    (tmp_path / "names" / "list.txt").write_text("emma\nolivia\n")
    (tmp_path / "names" / "notes.txt").write_text("a note")
    listed = [
        SourceConfig(path=str(tmp_path / "names")),
        SourceConfig(path=str(tmp_path / "names" / "list.txt"), one_doc_per_line=True),
    ]
    with caplog.at_level(logging.WARNING, logger="lm.text.sources"):
        docs = read(tmp_path, *listed)
    assert sorted(d.text for d in docs) == ["a note", "emma", "olivia"]  # not "emma\nolivia"
    assert f"named by source {str(tmp_path / 'names' / 'list.txt')!r}; read as" in caplog.text


def test_one_document_per_line(tmp_path):
    (tmp_path / "names.txt").write_text("emma\n\nolivia\nava\n")
    spec = SourceConfig(path=str(tmp_path / "names.txt"), one_doc_per_line=True)
    docs = read(tmp_path, spec)
    assert [d.text for d in docs] == ["emma", "olivia", "ava"]
    assert docs[1].source.endswith("names.txt:3")


def test_one_document_per_line_reads_classic_mac_and_windows_line_ends(tmp_path):
    spec = SourceConfig(path=str(tmp_path / "names.txt"), one_doc_per_line=True)
    (tmp_path / "names.txt").write_bytes(b"emma\rolivia\r\rava\r")  # classic Mac OS
    mac = read(tmp_path, spec)
    (tmp_path / "names.txt").write_bytes(b"emma\r\nolivia\r\n\r\nava\r\n")  # Windows
    windows = read(tmp_path, spec)
    for docs in (mac, windows):
        assert [(d.text, d.source.rpartition(":")[2]) for d in docs] == [
            ("emma", "1"),
            ("olivia", "2"),
            ("ava", "4"),
        ]
    (tmp_path / "names.txt").write_bytes(b"emma\rolivia\rav\xffa\r")
    with pytest.raises(InputError, match=r"names\.txt: invalid UTF-8 at byte 2 of line 3;"):
        read(tmp_path, spec)


def test_jsonl_and_gzipped_jsonl_with_a_configurable_field(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "alpha"}\n\n{"text": "beta", "id": 2}\n')
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as out:
        out.write(json.dumps({"body": "gamma"}) + "\n")
    docs = read(
        tmp_path,
        str(tmp_path / "a.jsonl"),
        SourceConfig(path=str(tmp_path / "b.jsonl.gz"), text_field="body"),
    )
    assert [d.text for d in docs] == ["alpha", "beta", "gamma"]


@pytest.mark.parametrize("suffix", [".xz", ".zst"])
def test_xz_and_zstd_inputs_are_read_and_a_cut_one_is_named(tmp_path, suffix):
    """They were skipped as binary files, with only a warning."""
    import lzma

    lines = "".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(500)).encode()
    packed = (
        lzma.compress(lines) if suffix == ".xz" else pa.Codec("zstd").compress(lines).to_pybytes()
    )
    (tmp_path / f"a.jsonl{suffix}").write_bytes(packed)
    (tmp_path / f"cut.jsonl{suffix}").write_bytes(packed[: len(packed) // 2])
    docs = read(tmp_path, str(tmp_path / f"a.jsonl{suffix}"))
    assert [d.text for d in docs] == [f"document {i}" for i in range(500)]
    with pytest.raises(InputError, match=rf"cut\.jsonl\{suffix}: the file is truncated or corrupt"):
        read(tmp_path, str(tmp_path / f"cut.jsonl{suffix}"))


def test_a_zstd_file_made_with_a_long_window_is_not_called_corrupt(tmp_path):
    """`zstd --long=31` declares a 2 GB window, more than the decoder takes: the file is
    whole, and was said to be truncated or corrupt."""
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:  # streamed: the header has a window
        out.write(b"some text line\n" * 100)
    frame = bytearray(sink.getvalue().to_pybytes())
    assert frame[4] >> 5 & 1 == 0, "a single-segment frame has no window descriptor"
    frame[5] = 21 << 3  # window log 10 + 21: 2 GB, as `zstd --long=31` writes it
    (tmp_path / "long.txt.zst").write_bytes(bytes(frame))
    with pytest.raises(InputError, match=r"long\.txt\.zst: compressed with a window larger than "
                                         r"the reader takes .*zstd -d --long=31"):  # fmt: skip
        read(tmp_path, str(tmp_path / "long.txt.zst"))


def test_a_damaged_bz2_is_named_damaged_not_blamed_on_its_content(tmp_path):
    """bz2 checks a block's CRC after handing out its bytes: the garbage failed first, as
    "the line is not valid JSON"."""
    lines = "".join(json.dumps({"text": f"document number {i} says hello"}) + "\n"
                    for i in range(3000))  # fmt: skip
    damaged = bytearray(bz2.compress(lines.encode()))
    damaged[197] ^= 0x10  # in the first block: its first line decodes to broken JSON
    (tmp_path / "x.jsonl.bz2").write_bytes(bytes(damaged))
    with pytest.raises(InputError, match=r"x\.jsonl\.bz2: the file is truncated or corrupt"):
        read(tmp_path, str(tmp_path / "x.jsonl.bz2"))
    (tmp_path / "bad.jsonl.bz2").write_bytes(bz2.compress(b'{"text": "fine"}\nnot json\n'))
    with pytest.raises(InputError, match=r"bad\.jsonl\.bz2:2: the line is not valid JSON"):
        read(tmp_path, str(tmp_path / "bad.jsonl.bz2"))  # a whole stream: its content is at fault


def test_a_bad_line_early_in_a_large_compressed_file_is_said_without_reading_it_all(
    tmp_path, monkeypatch
):
    # The check for a damaged stream read all the rest: a 20 GB dump, 35 minutes of bz2.
    import lm.text.readers

    monkeypatch.setattr(lm.text.readers, "CORRUPTION_CHECK_BYTES", 1 << 20)
    lines = "".join(json.dumps({"text": f"document {i} " * 8}) + "\n" for i in range(40_000))
    packed = bytearray(bz2.compress(('{"text": "fine"}\nnot json\n' + lines).encode()))
    packed[-300] ^= 0x10  # damage in the last block, megabytes after the bad line
    (tmp_path / "late.jsonl.bz2").write_bytes(bytes(packed))
    with pytest.raises(InputError, match=r"late\.jsonl\.bz2:2: the line is not valid JSON"):
        read(tmp_path, str(tmp_path / "late.jsonl.bz2"))


def test_a_jsonl_line_cut_inside_a_string_is_said_to_be_unterminated(tmp_path):
    """The line went to `json.loads` with its newline, read as a control character inside
    the string: "Invalid control character at column 30" for a line cut short."""
    (tmp_path / "cut.jsonl").write_text('{"text": "fine"}\n{"id": 99, "text": "broken\n')
    with pytest.raises(InputError, match=r"cut\.jsonl:2: .*\(Unterminated string starting at"):
        read(tmp_path, str(tmp_path / "cut.jsonl"))


def test_a_jsonl_null_text_is_skipped_as_a_parquet_null_and_a_number_is_named(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n{"text": null}\n{"text": "two"}\n')
    assert [d.text for d in read(tmp_path, str(tmp_path / "a.jsonl"))] == ["one", "two"]
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n{"text": 42}\n')
    with pytest.raises(
        InputError, match=r"b\.jsonl:2: field 'text' holds 42 \(int\), not a string"
    ):
        read(tmp_path, str(tmp_path / "b.jsonl"))


def test_a_json_file_is_read_as_records_not_as_text(tmp_path):
    """A `.json` file was plain text: its braces, quotes and field names went into the corpus."""
    (tmp_path / "array.json").write_text(json.dumps(
        [{"text": "first", "id": 1}, {"text": None}, {"text": "second\nline"}], indent=2
    ))  # fmt: skip
    docs = read(tmp_path, str(tmp_path / "array.json"))
    assert [(d.text, d.source) for d in docs] == [
        ("first", f"{tmp_path / 'array.json'}#0"), ("second\nline", f"{tmp_path / 'array.json'}#2")
    ]  # fmt: skip
    (tmp_path / "strings.json").write_text('["one text", "another text"]')
    assert [d.text for d in read(tmp_path, str(tmp_path / "strings.json"))] == [
        "one text", "another text"
    ]  # fmt: skip
    (tmp_path / "one.json").write_text('{\n  "body": "a whole record",\n  "n": 3\n}\n')
    spec = SourceConfig(path=str(tmp_path / "one.json"), text_field="body")
    assert [d.text for d in read(tmp_path, spec)] == ["a whole record"]
    # JSON Lines under a .json name (Hugging Face datasets' to_json), a BOM before it.
    (tmp_path / "lines.json").write_bytes(b'\xef\xbb\xbf{"text": "a"}\n{"text": "b"}\n')
    docs = read(tmp_path, str(tmp_path / "lines.json"))
    assert [(d.text, d.source) for d in docs] == [
        ("a", f"{tmp_path / 'lines.json'}:1"), ("b", f"{tmp_path / 'lines.json'}:2")
    ]  # fmt: skip


def test_a_json_file_in_utf16_reads_as_json_lines_and_metadata_in_a_folder_is_skipped(
    tmp_path, caplog
):
    # UTF-16 JSON Lines under a .json name failed as "Extra data": the first line was looked
    # for in the raw bytes. A dataset's metadata .json in a folder failed the whole ingest.
    lines = '{"text": "a"}\n{"text": "b"}\n'
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "bom.json").write_bytes(lines.encode("utf-16"))
    (tmp_path / "data" / "bare.json").write_bytes(lines.encode("utf-16-le"))
    info = tmp_path / "data" / "dataset_info.json"
    info.write_text(json.dumps({"version": 1, "splits": ["train"]}, indent=2))
    with caplog.at_level(logging.WARNING, logger="lm.text.readers"):
        docs = read(tmp_path, str(tmp_path / "data"))
    assert [d.text for d in docs] == ["a", "b", "a", "b"]
    assert "dataset_info.json: skipped, one JSON object without a field 'text'" in caplog.text
    with pytest.raises(InputError, match=r"dataset_info\.json: one JSON object without a field"):
        read(tmp_path, str(info))  # named itself: an error
    # Records under another field (a wrong text_field) stay an error in a folder too: skipped,
    # a folder of them built the corpus from the other sources alone.
    (tmp_path / "data" / "bom.json").write_text('{"content": "a"}\n{"content": "b"}\n')
    with pytest.raises(InputError, match=r"bom\.json:1: no field 'text' \(found: content\)"):
        read(tmp_path, str(tmp_path / "data"))


def test_metadata_json_on_one_line_in_a_folder_is_skipped(tmp_path, caplog):
    # Hugging Face datasets writes dataset_info.json and dataset_dict.json on one line (no
    # indent): read as JSON Lines, it failed the whole ingest as "no field 'text'".
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.json").write_text('{"text": "a"}\n{"text": "b"}\n')
    info = tmp_path / "data" / "dataset_info.json"
    info.write_text(json.dumps({"description": "", "splits": {"train": {}}}))  # no newline
    (tmp_path / "data" / "dataset_dict.json").write_text('{"splits": ["train"]}\n\n')
    with caplog.at_level(logging.WARNING, logger="lm.text.readers"):
        docs = read(tmp_path, str(tmp_path / "data"))
    assert [d.text for d in docs] == ["a", "b"]
    assert "dataset_info.json: skipped, one JSON object without a field 'text'" in caplog.text
    assert "dataset_dict.json: skipped, one JSON object without a field 'text'" in caplog.text
    with pytest.raises(InputError, match=r"dataset_info\.json: one JSON object without a field "
                       r"'text' \(found: description, splits\)"):  # fmt: skip
        read(tmp_path, str(info))  # named itself: an error
    # Two records under another field stay an error in a folder, said at the first.
    (tmp_path / "data" / "train.json").write_text('{"content": "a"}\n\n{"content": "b"}\n')
    with pytest.raises(InputError, match=r"train\.json:1: no field 'text' \(found: content\)"):
        read(tmp_path, str(tmp_path / "data"))


def test_a_parquet_summary_file_beside_its_dataset_is_skipped(tmp_path, caplog):
    # Dask's and Spark's `_metadata` holds the footers of the files beside it, no pages: read,
    # it failed the whole ingest as "corrupt from about row 0 on".
    folder = tmp_path / "data"
    folder.mkdir()
    footers = []
    for n in range(2):
        pq.write_table(pa.table({"text": [f"part {n}"]}), folder / f"part.{n}.parquet",
                       metadata_collector=footers)  # fmt: skip
        footers[-1].set_file_path(f"part.{n}.parquet")
    schema = pa.schema([("text", pa.string())])
    pq.write_metadata(schema, folder / "_metadata", metadata_collector=footers)
    pq.write_metadata(schema, folder / "_common_metadata")
    with caplog.at_level(logging.WARNING, logger="lm.text.readers"):
        docs = read(tmp_path, str(folder))
    assert [d.text for d in docs] == ["part 0", "part 1"]
    assert "_metadata: skipped, a Parquet summary file" in caplog.text


def test_a_json_array_is_read_record_by_record_compressed_wide_or_with_invalid_utf8(tmp_path):
    """One record at a time (`lm.text.json_array`), UTF-8 checked as it is read: the same
    documents, labels and errors as the whole file decoded at once gave."""
    text = json.dumps([{"text": f"record {i} é"} for i in range(3)], ensure_ascii=False, indent=1)
    (tmp_path / "a.json.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "w.json").write_bytes(text.encode("utf-16"))
    for name in ("a.json.gz", "w.json"):
        docs = read(tmp_path, str(tmp_path / name))
        assert [(d.text, d.source) for d in docs] == [
            (f"record {i} é", f"{tmp_path / name}#{i}") for i in range(3)
        ]
    invalid = text.encode().replace(b"record 1", b"record \xff1")
    (tmp_path / "bad.json").write_bytes(invalid)
    at = invalid.index(b"\xff")
    with pytest.raises(InputError, match=rf"bad\.json: invalid UTF-8 at byte {at}; fix the file"):
        read(tmp_path, str(tmp_path / "bad.json"))
    docs = read(tmp_path, str(tmp_path / "bad.json"), errors="replace")
    assert [d.text for d in docs] == ["record 0 é", "record \ufffd1 é", "record 2 é"]


DEEP = "[" * 5000 + "]" * 5000
LONG_INTEGER = "9" * 5000


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("a.jsonl", f'{{"text": "a", "m": {DEEP}}}\n',
         r"a\.jsonl:1: the line holds JSON nested deeper"),
        ("a.jsonl", f'{{"text": "a"}}\n{{"text": "b", "id": {LONG_INTEGER}}}\n',
         r"a\.jsonl:2: the line holds JSON with an integer longer than Python reads \(4300"),
        ("a.json", f'[{{"text": "a"}},\n {{"m": {DEEP}}}]',
         r"a\.json:2: the value at column 2 holds JSON nested"),
        ("a.json", f'[{{"text": "a"}}, {LONG_INTEGER}]',
         r"a\.json:1: the value at column 17 holds JSON with an"),
        ("a.json", f'{{"text": "a",\n "m": {DEEP[3000:7000]}}}',
         r"a\.json: the file holds JSON nested deeper"),
    ],
)  # fmt: skip
def test_json_deeper_or_longer_than_python_reads_is_an_error_naming_the_place(
    tmp_path, name, content, problem
):
    """Valid JSON that `json` cannot read raised RecursionError or ValueError: a traceback."""
    (tmp_path / name).write_text(content)
    with pytest.raises(InputError, match=problem):
        read(tmp_path, str(tmp_path / name))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('[{"text": "a"},\n {"text": "b"]', r"bad\.json:2: not valid JSON \(Expecting"),
        (
            '[{"text": "a"},\n {"text": "b"},\n]',
            r"bad\.json:3: not valid JSON \(Expecting value at column 1\)",
        ),
        ('[{"text": "a"}] {}', r"bad\.json:1: not valid JSON \(Extra data at column 17\)"),
        (
            '[{"text": "a"}, {"body": "b"}]',
            r"bad\.json#1: no field 'text' \(found: body\); the "
            "records before it have 'text': fix or remove this one",
        ),
        ('[{"text": "a"}, 7]', r"bad\.json#1: no field 'text' \(found: int\)"),
        ('{"text": ["a"]}', r"bad\.json:1: field 'text' holds \[\"a\"\] \(list\)"),
    ],
)
def test_a_bad_json_file_is_an_error_naming_the_file_and_place(tmp_path, content, problem):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(InputError, match=problem):
        read(tmp_path, str(tmp_path / "bad.json"))


def test_a_tsv_file_is_read_by_its_column_with_tabs_between_fields(tmp_path):
    (tmp_path / "d.tsv").write_text('id\ttext\n1\ta text, with a comma\n2\t"quoted\tfield"\n')
    docs = read(tmp_path, str(tmp_path / "d.tsv"))
    assert [(d.text, d.source) for d in docs] == [
        ("a text, with a comma", f"{tmp_path / 'd.tsv'}:2"),
        ("quoted\tfield", f"{tmp_path / 'd.tsv'}:3"),
    ]
    (tmp_path / "e.tsv").write_text('id\ttext\n1\t"open\n')
    with pytest.raises(InputError, match=r"e\.tsv:2: malformed TSV .* never closes"):
        read(tmp_path, str(tmp_path / "e.tsv"))


def test_empty_files_of_any_kind_are_skipped_with_a_warning(tmp_path, caplog):
    """An empty .csv in a folder failed the whole ingest ("no column 'text' (columns: )")."""
    for name in ("a.csv", "b.jsonl", "c.txt", "d.jsonl.gz"):
        (tmp_path / name).write_bytes(gzip.compress(b"") if name.endswith(".gz") else b"")
    (tmp_path / "e.txt").write_text("the only text")
    with caplog.at_level(logging.WARNING, logger="lm.text.readers"):
        docs = read(tmp_path, str(tmp_path))
    assert [d.text for d in docs] == ["the only text"]
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"{tmp_path / name}: empty, skipped" for name in
                    ("a.csv", "b.jsonl", "c.txt", "d.jsonl.gz")]  # fmt: skip


def test_a_utf8_bom_is_no_part_of_the_first_name(tmp_path):
    (tmp_path / "names.txt").write_bytes(b"\xef\xbb\xbfalice\nbob\n")
    spec = SourceConfig(path=str(tmp_path / "names.txt"), one_doc_per_line=True)
    assert [d.text for d in read(tmp_path, spec)] == ["alice", "bob"]
    (tmp_path / "census.txt").write_bytes(b"\xef\xbb\xbfMARY 2.629 2.629 1\nANNA 0.5 3.1 2\n")
    census = SourceConfig(path=str(tmp_path / "census.txt"), format="census-names")
    assert [d.text for d in read(tmp_path, census)] == ["mary", "anna"]  # was: "not ASCII"


def test_parquet_and_csv_with_a_configurable_column(tmp_path):
    pq.write_table(pa.table({"content": ["one", "two"], "n": [1, 2]}), tmp_path / "d.parquet")
    (tmp_path / "d.csv").write_text('id,content\n1,"three, with a comma"\n2,"four\nlines"\n')
    docs = read(
        tmp_path,
        SourceConfig(path=str(tmp_path / "d.parquet"), text_field="content"),
        SourceConfig(path=str(tmp_path / "d.csv"), text_field="content"),
    )
    assert [d.text for d in docs] == ["one", "two", "three, with a comma", "four\nlines"]


@pytest.mark.parametrize("name", ["dump.xml", "dump.xml.bz2"])
def test_wikipedia_dump_keeps_articles_with_titles_and_skips_redirects_and_other_namespaces(
    tmp_path, name
):
    pages = [
        wiki_page("Alpha", "Alpha is a '''letter'''."),
        wiki_page("Old name", "#REDIRECT [[Alpha]]", redirect="Alpha"),
        wiki_page("Talk:Alpha", "discussion", namespace=1),
        wiki_page("Beta", "Beta follows [[Alpha|the first letter]]."),
    ]
    write_wiki_dump(tmp_path / name, pages)
    docs = read(tmp_path, str(tmp_path / name))
    assert [d.source.rpartition("#")[2] for d in docs] == ["Alpha", "Beta"]
    assert all(d.markup == "wikitext" for d in docs)


def test_a_history_dump_page_reads_its_latest_revision_with_text(tmp_path):
    # A latest revision whose text was deleted dropped the page; earlier ones have text. A
    # blanked one (empty text, not deleted) is the page's real text: the page has none.
    def revision(text: str | None) -> str:
        hidden = '<text deleted="deleted"/>'
        body = hidden if text is None else f'<text xml:space="preserve">{text}</text>'
        return f"<revision><id>1</id>{body}</revision>"

    def page(title: str, *texts: str | None) -> str:
        revisions = "".join(revision(text) for text in texts)
        return f"<page><title>{title}</title><ns>0</ns><id>1</id>{revisions}</page>"

    pages = [page("A", "first words", "second words", None), page("B", "only", "latest B"),
             page("Blanked", "old words", ""), page("Spaces", "old words", "  ")]  # fmt: skip
    write_wiki_dump(tmp_path / "history.xml", pages)
    docs = read(tmp_path, str(tmp_path / "history.xml"))
    assert [(d.source.rpartition("#")[2], d.text) for d in docs] == [
        ("A", "second words"), ("B", "latest B")
    ]  # fmt: skip


def test_http_url_is_streamed_and_read_by_its_format(tmp_path, caplog):
    served = tmp_path / "served"
    served.mkdir()
    (served / "docs.jsonl").write_text('{"text": "from the web"}\n')
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/docs.jsonl"
        with caplog.at_level(logging.INFO, logger="lm.progress"):
            docs = read(tmp_path, url)
    finally:
        server.shutdown()
    assert [(d.text, d.source) for d in docs] == [("from the web", f"{url}:1")]
    assert not any((tmp_path / "downloads").iterdir()), "the download is removed after reading"
    # The download has progress lines of its own (it was silent), and reading counts its size.
    lines = [record.getMessage() for record in caplog.records if record.name == "lm.progress"]
    assert lines[0].startswith("download docs.jsonl: 25 B / 25 B (100%)")
    assert lines[1].startswith("ingest: 25 B / 25 B (100%)")


def test_a_fetch_that_may_succeed_later_is_transient_and_a_missing_page_is_not(tmp_path):
    """Every failed fetch was an InputError, which ingest never retries: a 503 failed the run,
    where running it again a second later worked."""
    from lm.text.sources import TransientInputError

    served = tmp_path / "served"
    served.mkdir()
    (served / "docs.jsonl").write_text('{"text": "from the web"}\n')
    with serving_busy_once(served) as base:
        with pytest.raises(TransientInputError, match=r"docs\.jsonl: cannot fetch \(Service"):
            read(tmp_path, f"{base}/docs.jsonl")
        assert [d.text for d in read(tmp_path, f"{base}/docs.jsonl")] == ["from the web"]
        with pytest.raises(TransientInputError):
            read(tmp_path, f"{base}/gone.jsonl")  # 503 first
        with pytest.raises(InputError, match="File not found") as missing:
            read(tmp_path, f"{base}/gone.jsonl")  # then 404: trying again will not help
    assert not isinstance(missing.value, TransientInputError)


@pytest.mark.parametrize("framing", ["Content-Length: 1000", "Transfer-Encoding: chunked"])
def test_a_download_whose_connection_ends_early_is_transient_not_a_cut_corpus(tmp_path, framing):
    """A body cut short: with its length said, http.client ended it without an error and the
    first 10 bytes became the document; chunked, IncompleteRead escaped as a traceback."""
    import socket

    from lm.text.sources import TransientInputError

    listener = socket.create_server(("127.0.0.1", 0))
    body = b"a\r\nsome text\r\n" if "chunked" in framing else b"some text "

    def answer_then_hang_up():
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.sendall(f"HTTP/1.1 200 OK\r\n{framing}\r\n\r\n".encode() + body)
        connection.close()

    threading.Thread(target=answer_then_hang_up, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/cut.txt"
    try:
        with pytest.raises(TransientInputError, match=r"cut\.txt: cannot fetch \("):
            read(tmp_path, url)
    finally:
        listener.close()
    assert not any((tmp_path / "downloads").iterdir()), "the cut download is removed"


def test_an_io_error_reading_a_file_is_transient_not_called_corrupt(tmp_path):
    """EIO (a failing disk, a network file system) read as "truncated or corrupt", and was
    never retried."""
    from lm.text.sources import TransientInputError

    with pytest.raises(TransientInputError, match=r"cannot be read now \(Input/output error\)"):
        read(tmp_path, SourceConfig(path="/proc/self/mem", format="text"))


def test_fingerprint_changes_when_a_file_changes(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    inputs = resolve_sources([SourceConfig(path=str(tmp_path))])
    before = fingerprint_inputs(inputs)
    (tmp_path / "b.txt").write_text("two")
    assert fingerprint_inputs(resolve_sources([SourceConfig(path=str(tmp_path))])) != before


def test_a_file_name_that_is_not_utf8_is_read_under_a_printable_name(tmp_path):
    """An old archive's `caf\xe9.txt` (Latin-1 bytes): its name held Python's stand-ins for
    the byte, which could not be encoded, and the run died with UnicodeEncodeError."""
    import os

    os.makedirs(tmp_path / "d")
    with open(os.path.join(os.fsencode(tmp_path / "d"), b"caf\xe9.txt"), "wb") as out:
        out.write(b"a coffee house")
    inputs = resolve_sources([SourceConfig(path=str(tmp_path / "d"))])
    assert [item.name for item in inputs] == [str(tmp_path / "d" / "caf\\xe9.txt")]
    assert len(fingerprint_inputs(inputs)) == 64
    [document] = iter_input_documents(inputs, "strict", tmp_path / "downloads")
    assert document.text == "a coffee house" and document.source.encode()  # writable


def test_literal_name_with_glob_characters_is_read_as_that_file_or_folder(tmp_path):
    (tmp_path / "report [final].txt").write_text("the final report")
    (tmp_path / "report f.txt").write_text("what the pattern would match")
    (tmp_path / "drafts [old]").mkdir()
    (tmp_path / "drafts [old]" / "one.txt").write_text("an old draft")
    docs = read(tmp_path, str(tmp_path / "report [final].txt"), str(tmp_path / "drafts [old]"))
    assert [d.text for d in docs] == ["the final report", "an old draft"]


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_utf16_and_utf32_text_with_a_bom_is_decoded_whole_and_per_line(tmp_path, encoding):
    # "ĀਅĀ" puts a 0x0A byte next to a 0x00 byte off a code-unit boundary: not a newline.
    text = "first ĀਅĀ line\r\nsecond 😀\r\n"
    bom = {"utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff"}.get(encoding)
    bom = bom or {"utf-32-le": b"\xff\xfe\x00\x00", "utf-32-be": b"\x00\x00\xfe\xff"}[encoding]
    path = tmp_path / "notepad.txt"
    path.write_bytes(bom + text.encode(encoding))
    assert [d.text for d in read(tmp_path, str(path))] == [text]
    per_line = SourceConfig(path=str(path), one_doc_per_line=True)
    docs = read(tmp_path, per_line)
    assert [(d.text, d.source.rpartition(":")[2]) for d in docs] == [
        ("first ĀਅĀ line", "1"),
        ("second 😀", "2"),
    ]
    # Lines that span the reader's 64 KiB chunks come out whole.
    many = [f"name {i}" for i in range(20_000)]
    path.write_bytes(bom + "\n".join(many).encode(encoding))
    assert [d.text for d in read(tmp_path, per_line)] == many


def test_wide_lines_are_whole_when_reads_end_inside_a_newline():
    from lm.text.readers import _wide_lines

    class Trickle(io.BytesIO):
        def read(self, size=-1):  # a stream that returns 3 bytes at a time, as some may
            return super().read(3)

    data = "a\nbc\n\nd".encode("utf-16-le")
    assert [line.decode("utf-16-le") for line in _wide_lines(Trickle(data), "utf-16-le")] == [
        "a\n",
        "bc\n",
        "\n",
        "d",
    ]


def test_csv_with_a_utf8_bom_finds_its_first_column(tmp_path):
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbftext,id\r\nfrom excel,1\r\n")
    assert [d.text for d in read(tmp_path, str(tmp_path / "excel.csv"))] == ["from excel"]


def test_csv_invalid_utf8_names_the_record_s_line_or_is_replaced_with_one_warning(tmp_path, caplog):
    # The bad byte sits far past the decoder's first 8 KB: the line must still be its own.
    rows = [f'{i},"row {i}"' for i in range(1, 700)] + ['700,"multi\nline caf\xe9"', '701,"ok"']
    path = tmp_path / "latin1.csv"
    path.write_bytes(("id,text\n" + "\n".join(rows) + "\n").encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.csv:701: field 'text' holds invalid UTF-8 at "
                                         r"byte 14 of the field"):  # fmt: skip
        read(tmp_path, str(path))
    with caplog.at_level(logging.WARNING):
        docs = read(tmp_path, str(path), errors="replace")
    assert (docs[699].text, docs[699].source) == ("multi\nline caf\ufffd", f"{path}:701")
    assert (docs[700].text, docs[700].source) == ("ok", f"{path}:703")
    assert f"{path}:701: invalid UTF-8 replaced with U+FFFD" in caplog.text


def test_a_semicolon_csv_is_read_with_its_delimiter_and_without_it_the_error_says_so(tmp_path):
    """European Excel separates by ";" (the comma is its decimal mark): the whole header was
    one column, "no column 'text' (columns: id;text)", with no way to read the file."""
    path = tmp_path / "export.csv"
    path.write_text('id;text;price\n1;"first; with a semicolon";3,50\n2;second;4,00\n')
    with pytest.raises(InputError, match=r"export\.csv: no column 'text' \(columns: id;text;price\)"
                                         r"; the header is one column that holds \";\": set "
                                         r'delimiter = ";" on this source'):  # fmt: skip
        read(tmp_path, str(path))
    docs = read(tmp_path, SourceConfig(path=str(path), delimiter=";"))
    assert [d.text for d in docs] == ["first; with a semicolon", "second"]
    for bad in ("", ";;", '"', "\n"):
        with pytest.raises(ValueError, match="must be one character other than a quote"):
            SourceConfig(path=str(path), delimiter=bad)
    with pytest.raises(ValueError, match=r'a tab is "\\t" in double quotes'):  # TOML's '\t'
        SourceConfig(path=str(path), delimiter="\\t")


def test_a_folder_s_delimiter_leaves_its_tsvs_their_tab_unless_the_format_says_tsv(
    tmp_path, caplog
):
    """`delimiter = ";"` on a folder of European CSVs read its one TSV with ";" too: one
    column, and the whole source failed."""
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "a.csv").write_text("id;text\n1;from the csv\n")
    (folder / "b.tsv").write_text("id\ttext\n2\tfrom the tsv; with a semicolon\n")
    with caplog.at_level(logging.WARNING):
        docs = read(tmp_path, SourceConfig(path=str(folder), delimiter=";"))
    assert [d.text for d in docs] == ["from the csv", "from the tsv; with a semicolon"]
    assert f'{folder / "b.tsv"}: delimiter (a .tsv is read with tabs; format = "tsv" sets' in (
        caplog.text
    )
    piped = tmp_path / "piped.tsv"
    piped.write_text("id|text\n3|piped\n")
    docs = read(tmp_path, SourceConfig(path=str(piped), format="tsv", delimiter="|"))
    assert [d.text for d in docs] == ["piped"]
    # A source naming the .tsv itself means its delimiter for it: it was refused, the error
    # saying to set the delimiter it had set.
    semi = tmp_path / "semi.tsv"
    semi.write_text("id;text\n4;a semicolon file named .tsv\n")
    docs = read(tmp_path, SourceConfig(path=str(semi), delimiter=";"))
    assert [d.text for d in docs] == ["a semicolon file named .tsv"]


def test_a_record_with_more_fields_than_the_header_is_an_error_not_a_cut_text(tmp_path):
    """A separator inside an unquoted field cut the text there and dropped the rest silently;
    empty fields past the header (a spreadsheet's trailing separators) are no text lost."""
    path = tmp_path / "notes.csv"
    path.write_text("id;text\n1;first\n2;cut here; the rest was dropped\n")
    with pytest.raises(InputError, match=r'notes\.csv:3: the record has 3 fields, the header 2: '
                                         r'a ";" inside a field that is not quoted\?'):  # fmt: skip
        read(tmp_path, SourceConfig(path=str(path), delimiter=";"))
    tags = tmp_path / "tags.csv"  # the example quoted is the file's own separator's
    tags.write_text("text,tags\nA review,drama,romance\n")
    with pytest.raises(InputError, match=r'tags\.csv:2: .* a "," inside a field that is not '
                                         r'quoted\? quote such fields \("a, b"\)'):  # fmt: skip
        read(tmp_path, str(tags))
    trailing = tmp_path / "excel.csv"
    trailing.write_text("id,text\n1,first,,\n2,second,\n")
    assert [d.text for d in read(tmp_path, str(trailing))] == ["first", "second"]


def test_replacements_past_the_first_few_are_summed_up_in_one_warning(tmp_path, caplog):
    path = tmp_path / "names.txt"
    path.write_bytes(b"".join(b"name\xff %d\n" % i for i in range(500)))
    with caplog.at_level(logging.WARNING):
        docs = read(tmp_path, SourceConfig(path=str(path), one_doc_per_line=True), errors="replace")
    assert len(docs) == 500 and all("\ufffd" in d.text for d in docs)
    said = [r.getMessage() for r in caplog.records if "U+FFFD" in r.getMessage()]
    assert len(said) == 4 and said[0] == f"{path}:1: invalid UTF-8 replaced with U+FFFD"
    assert said[-1] == (f"{path}: invalid text replaced with U+FFFD in 500 places in all "
                        "(the first 3 named above)")  # fmt: skip


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            'id,text\n1,"opens\n2,never closes\n3,gone\n',
            r":2: malformed CSV .*unexpected end of data: a quote that opens a field never closes",
        ),
        ("id,text\n1,one\n2\n3,three\n", r":3: the record has 1 of the header's 2 fields, so no"),
        (
            'id,text\n1,one\n2,"quoted" then more\n',  # lenient parsers drop the quotes
            r":3: malformed CSV .*: text follows the quote that closes a field; quote the whole",
        ),
        (
            "text,id,text\n1,2,3\n",  # a reader that keeps the last column read another text
            r": the header names column 'text' 2 times \(fields 1, 3\); rename all but one",
        ),
    ],
    ids=["unclosed-quote", "short-record", "text-after-closing-quote", "column-named-twice"],
)
def test_csv_damage_is_an_error_naming_the_line_not_a_silent_loss(tmp_path, content, problem):
    # Unchecked, the open quote swallowed every record after it into one document, and the
    # short record was skipped without a word (a JSONL line without its field is an error).
    (tmp_path / "d.csv").write_text(content)
    with pytest.raises(InputError, match=r"d\.csv" + problem):
        read(tmp_path, str(tmp_path / "d.csv"))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_jsonl_and_csv_in_utf16_or_utf32_with_a_bom_are_read(tmp_path, encoding):
    # Read as UTF-8 they failed, and the error advised "replace", which did not help either.
    (tmp_path / "d.jsonl").write_bytes('{"text": "ünï"}\n{"text": "two"}\n'.encode(encoding))
    (tmp_path / "d.csv").write_bytes('id,text\n1,"ünï\nline"\n'.encode(encoding))
    docs = read(tmp_path, str(tmp_path / "d.jsonl"), str(tmp_path / "d.csv"))
    assert [(d.text, d.source.rpartition(":")[2]) for d in docs] == [
        ("ünï", "1"), ("two", "2"), ("ünï\nline", "2")
    ]  # fmt: skip


NOT_LATIN = {  # a NUL in every other byte is Latin text's alone; 一 is U+4E00, a NUL either way
    "e.txt": "Привет, как дела? Сегодня хорошая погода.\n" * 40,
    "f.txt": "我们今天天气很好，学生喜欢北京。一个人一天一年。" * 100,  # no space, no line end
    "g.txt": "नमस्ते दुनिया, लड़की सड़क पर है।\nשלום עולם, מה שלומך?\n" * 30,
    # Characters `str.isprintable` refuses: these were skipped as binary, "could not be told apart".
    "j.txt": "東京は、　日本の首都です。　今日はいい天気ですね。\n" * 30,  # ideographic space
    "k.txt": "Bonjour\u00a0! Ça va\u00a0? Oui, très bien.\n" * 30,  # no-break spaces
    "l.txt": "می\u200cخواهم \u200fسلام 👩\u200d💻 co\u00adoperate\n" * 30,  # joiners, marks
}


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_byte_order_mark_is_read_not_skipped_as_binary(tmp_path, encoding, caplog):
    # Windows' "Unicode" without a signature: skipped as binary (text), or "not valid JSON".
    (tmp_path / "a.txt").write_bytes("Grüße aus Köln, 𝄞 and more\n".encode(encoding))
    (tmp_path / "b.jsonl").write_bytes('{"text": "ünï"}\n{"text": "two"}\n'.encode(encoding))
    (tmp_path / "c.csv").write_bytes('id,text\n1,"ünï\nline"\n'.encode(encoding))
    (tmp_path / "d.bin").write_bytes(bytes([1, 0, 2, 0, 0, 0, 3, 0]) * 100)  # binary: NUL pairs
    stray = prose(0, 400).encode()  # UTF-8 with a NUL: binary still, in either alignment
    (tmp_path / "h.bin").write_bytes(stray[:1001] + b"\0" + stray[1001:])
    (tmp_path / "i.bin").write_bytes(stray[:1000] + b"\0" + stray[1000:])
    for name, text in NOT_LATIN.items():
        (tmp_path / name).write_bytes(text.encode(encoding))
    with caplog.at_level(logging.WARNING, logger="lm.text.readers"):
        docs = read(tmp_path, str(tmp_path))
    assert [d.text for d in docs] == [
        "Grüße aus Köln, 𝄞 and more\n", "ünï", "two", "ünï\nline", *NOT_LATIN.values()
    ]  # fmt: skip
    label = encoding.upper()
    assert f"{tmp_path / 'a.txt'}: read as {label} (it has no byte-order mark)" in caplog.text
    for name in ("d.bin", "h.bin", "i.bin"):
        assert f"{tmp_path / name}: skipped, it looks like a binary file" in caplog.text


def test_a_parquet_file_that_gives_no_documents_says_why(tmp_path, caplog):
    """A zero-row file, or a text column of nulls and blanks, gave nothing without a word, and
    a run of it alone failed "(the warnings above say why)" with no warning above."""
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "zero.parquet")
    pq.write_table(pa.table({"text": [None, "  ", ""]}), tmp_path / "blank.parquet")
    with caplog.at_level(logging.WARNING, logger="lm.text.readers"):
        assert read(tmp_path, str(tmp_path)) == []
    assert f"{tmp_path / 'zero.parquet'}: no documents: it has no rows" in caplog.text
    assert (f"{tmp_path / 'blank.parquet'}: no documents: 3 rows, none with text in column "
            "'text'") in caplog.text  # fmt: skip


def test_parquet_invalid_utf8_names_the_row_unless_replace_is_asked(tmp_path, caplog):
    # Parquet promises UTF-8 but a writer may not check: pyarrow's own error named no file.
    values = pa.array([b"fine", None, b"caf\xe9"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"text": values}), tmp_path / "w.parquet")
    with pytest.raises(InputError, match=r"w\.parquet#2: column 'text' holds invalid UTF-8 at "
                                         r"byte 3 of the value"):  # fmt: skip
        read(tmp_path, str(tmp_path / "w.parquet"))
    with caplog.at_level(logging.WARNING):
        docs = read(tmp_path, str(tmp_path / "w.parquet"), errors="replace")
    assert [(d.text, d.source.rpartition("#")[2]) for d in docs] == [
        ("fine", "0"), ("caf\ufffd", "2")
    ]  # fmt: skip
    assert "w.parquet#2: invalid UTF-8 replaced with U+FFFD" in caplog.text


def test_a_parquet_page_damaged_past_the_footer_names_the_file(tmp_path):
    path = tmp_path / "hurt.parquet"
    texts = [f"document number {i} " * 3 for i in range(2000)]
    pq.write_table(pa.table({"text": texts}), path, compression="none", use_dictionary=False)
    data = bytearray(path.read_bytes())
    page = data.index(b"document number 1000 ")
    data[page - 4 : page] = b"\xff\xff\xff\x7f"  # a string's length prefix, far too large
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"hurt\.parquet: corrupt from about row \d+ on"):
        read(tmp_path, str(path))


@pytest.mark.parametrize(
    "column",
    [
        pytest.param(pa.array(["one", None, "two", "one"]).dictionary_encode(), id="dictionary"),
        pytest.param(
            pa.array(["one", None, "two", "one"], getattr(pa, "string_view", pa.string)()),
            id="string-view",
            marks=pytest.mark.skipif(
                not hasattr(pa.types, "is_string_view"), reason="pyarrow without string_view"
            ),
        ),
    ],
)
def test_parquet_dictionary_and_string_view_text_columns_are_read(tmp_path, column):
    pq.write_table(pa.table({"text": column}), tmp_path / "c.parquet")
    assert pq.ParquetFile(tmp_path / "c.parquet").schema_arrow.field("text").type == column.type
    docs = read(tmp_path, str(tmp_path / "c.parquet"))
    assert [(d.text, d.source.rpartition("#")[2]) for d in docs] == [
        ("one", "0"),
        ("two", "2"),
        ("one", "3"),
    ]


def test_wikipedia_dump_with_a_bom_xml_declaration_and_comment_is_detected(tmp_path):
    path = write_wiki_dump(tmp_path / "export.xml", [wiki_page("Alpha", "Alpha is a letter.")])
    prolog = b'\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?>\n<!-- exported -->\n'
    path.write_bytes(prolog + path.read_bytes())
    docs = read(tmp_path, str(path))
    assert [(d.source, d.text, d.markup) for d in docs] == [
        (f"{path}#Alpha", "Alpha is a letter.", "wikitext")
    ]


# -- bad inputs ----------------------------------------------------------------------------


def test_missing_path_names_the_path(tmp_path):
    with pytest.raises(InputError, match=r"nowhere\.txt: no such file or directory"):
        read(tmp_path, str(tmp_path / "nowhere.txt"))


def test_empty_folder_names_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: the folder contains no files"):
        read(tmp_path, str(tmp_path / "empty"))


def test_a_subfolder_that_cannot_be_listed_is_an_error_naming_it(tmp_path, monkeypatch):
    """`Path.rglob` skipped a folder it could not list, and its files were silently left out
    of the corpus. As root, chmod 000 does not stop a listing: the denial is simulated."""

    (tmp_path / "a.txt").write_text("readable")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "b.txt").write_text("in a folder that cannot be listed")
    _deny_listing(monkeypatch, "locked")
    with pytest.raises(InputError, match=r"cannot read \S*locked \(permission denied\)"):
        resolve_sources([SourceConfig(path=str(tmp_path))])
    with pytest.raises(InputError, match=r"\*\*/\*\.txt: cannot read \S*locked \(permission"):
        resolve_sources([SourceConfig(path=str(tmp_path / "**" / "*.txt"))])


def _deny_listing(monkeypatch, name: str) -> None:
    """Listing a folder called `name` fails as without permission: as root, chmod 000 does not
    stop a listing."""
    import os

    scandir = os.scandir

    def scandir_denying(path="."):
        if Path(path).name == name:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", scandir_denying)


def test_a_pattern_is_not_refused_for_an_unreadable_folder_it_cannot_reach(tmp_path, monkeypatch):
    """`*/text/**` was refused for `x/other/locked`, which it never reads: the folders below
    the pattern's start were walked, not those its parts before `**` match."""

    for folder in ("x/text", "y/text", "x/other/locked"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "x/text/a.txt").write_text("first")
    (tmp_path / "y/text/b.txt").write_text("second")
    _deny_listing(monkeypatch, "locked")
    found = resolve_sources([SourceConfig(path=str(tmp_path / "*" / "text" / "**" / "*.txt"))])
    assert [item.path.name for item in found] == ["a.txt", "b.txt"]
    with pytest.raises(InputError, match=r"\*\*/b\.txt: cannot read \S*locked \(permission"):
        resolve_sources([SourceConfig(path=str(tmp_path / "**" / "b.txt"))])


def test_a_wildcard_part_names_a_folder_it_cannot_list_and_a_source_it_cannot_reach(
    tmp_path, monkeypatch
):
    """`data/*/*.txt` skipped an unlistable `data/locked/` in silence (only `**` was checked),
    and a file named in a folder that cannot be entered was a PermissionError traceback."""
    import os

    for folder in ("data/open", "data/locked"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "a.txt").write_text(folder)
    _deny_listing(monkeypatch, "locked")
    with pytest.raises(InputError, match=r"\*\.txt: cannot read \S*data/locked \(permission"):
        resolve_sources([SourceConfig(path=str(tmp_path / "data/*/*.txt"))])
    found = resolve_sources([SourceConfig(path=str(tmp_path / "data/o*/*.txt"))])
    assert [item.path.parent.name for item in found] == ["open"]
    stat = os.stat

    def stat_denying_below_locked(path, *args, **kwargs):
        if "/locked/" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat_denying_below_locked)
    with pytest.raises(InputError, match=r"locked/a\.txt: cannot reach it \(permission denied\): "
                                         "a folder on its way cannot be entered"):  # fmt: skip
        resolve_sources([SourceConfig(path=str(tmp_path / "data/locked/a.txt"))])


def test_a_relative_source_missing_from_a_deleted_current_folder_is_one_error(
    tmp_path, monkeypatch
):
    """A shell in a folder since deleted: saying where a relative path was read from raised
    FileNotFoundError, a traceback in place of the error."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    for source in ("notes.txt", "notes/*.txt"):
        with pytest.raises(InputError, match=r"read from the current folder, which was deleted"):
            resolve_sources([SourceConfig(path=source)])


def test_a_volume_s_lost_and_found_is_skipped_and_other_failures_say_their_own_reason(
    tmp_path, monkeypatch
):
    """A data disk's mount point holds fsck's `lost+found`, root's alone: a source of the whole
    disk failed on it, where `Path.rglob` had skipped it. A folder that failed otherwise (an
    I/O error, one removed while listed) was said to be "permission denied"."""
    import errno
    import os

    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("readable")
    (tmp_path / "lost+found").mkdir()
    scandir = os.scandir

    def scandir_denying(path="."):
        if Path(path).name == "lost+found":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        if Path(path).name == "flaky":
            raise OSError(errno.EIO, "Input/output error", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", scandir_denying)
    for source in (tmp_path, tmp_path / "**" / "*.txt"):
        found = resolve_sources([SourceConfig(path=str(source))])
        assert [item.path.name for item in found] == ["a.txt"], source
    (tmp_path / "flaky").mkdir()
    with pytest.raises(InputError, match=r"cannot read \S*flaky \(input/output error\)"):
        resolve_sources([SourceConfig(path=str(tmp_path))])


def test_a_file_in_a_folder_that_cannot_be_entered_is_an_error_naming_it(tmp_path, monkeypatch):
    """A folder with read but no search permission lists its names, which cannot be looked
    at: a pattern's match there failed as a bare PermissionError (a traceback from `check`)."""
    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "a.txt").write_text("readable")
    (tmp_path / "shut").mkdir()
    (tmp_path / "shut" / "b.txt").write_text("in a folder that cannot be entered")
    is_file = Path.is_file

    def is_file_denied_in_shut(path):
        if path.parent.name == "shut":
            raise PermissionError(13, "Permission denied", str(path))
        return is_file(path)

    monkeypatch.setattr(Path, "is_file", is_file_denied_in_shut)
    for pattern in (tmp_path / "*" / "*.txt", tmp_path / "**" / "*.txt"):
        with pytest.raises(InputError, match=r"\*\.txt: cannot read \S*shut/b\.txt \(permission"):
            resolve_sources([SourceConfig(path=str(pattern))])


def test_an_input_that_cannot_be_opened_is_an_error_naming_it(tmp_path, monkeypatch):
    # As root, chmod 000 does not stop a read: the denial is simulated at the open.
    import lm.text.ingest

    (tmp_path / "doc005.txt").write_text("readable")
    (tmp_path / "doc006.txt").write_text("unreadable")

    def open_denying_doc006(path, mode="r", *args, **kwargs):
        if Path(path).name == "doc006.txt":
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(lm.text.ingest, "open", open_denying_doc006, raising=False)
    with pytest.raises(InputError, match=r"doc006\.txt: permission denied; make it readable"):
        read(tmp_path, str(tmp_path))


@pytest.mark.parametrize(
    "error",
    [PermissionError(13, "Permission denied"), FileNotFoundError(2, "No such file"),
     IsADirectoryError(21, "Is a directory"), InputError("bad.jsonl:2: not JSON")],
    ids=lambda error: type(error).__name__,
)  # fmt: skip
def test_ingest_does_not_retry_what_reading_again_would_repeat(error):
    from tasks.ingest import _is_transient

    assert not _is_transient(None, None, SimpleNamespace(result=partial(_raise, error)))


def test_ingest_retries_an_io_hiccup():
    from tasks.ingest import _is_transient

    hiccup = TimeoutError("timed out")
    assert _is_transient(None, None, SimpleNamespace(result=partial(_raise, hiccup)))


def _raise(error: Exception):
    raise error


def test_binary_file_is_skipped_with_a_warning_naming_it_and_its_kind(tmp_path, caplog):
    """A PDF beside the texts failed the whole run as invalid UTF-8 (it has no NUL in its
    first bytes). A file that starts as an Arrow stream does but is none is skipped too."""
    (tmp_path / "image.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "paper.pdf").write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n")
    (tmp_path / "data-00000").write_bytes(b"\xff\xff\xff\xff\x10\x01\x00\x00")
    (tmp_path / "notes").write_bytes(gzip.compress(b"some words"))
    (tmp_path / "other.bin").write_bytes(b"\x00\x00\x01\x02" * 8)
    (tmp_path / "real.txt").write_text("words")
    with caplog.at_level(logging.WARNING):
        docs = read(tmp_path, str(tmp_path))
    assert [d.text for d in docs] == ["words"]
    skipped = [("image.bin", "a PNG image, not text"),
               ("paper.pdf", "a PDF document: extract its text first, not text"),
               ("data-00000", "it looks like a binary file (it starts as Arrow does, but"),
               ("notes", "gzip-compressed without .gz in its name: name it so"),
               ("other.bin", "it looks like a binary file (it contains NUL bytes")]  # fmt: skip
    for name, said in skipped:
        assert f"{tmp_path / name}: skipped, {said}" in caplog.text, name


def test_a_hugging_face_dataset_folder_and_arrow_files_are_read_batch_by_batch(tmp_path, caplog):
    """`Dataset.save_to_disk` writes Arrow IPC streams beside two JSON files of metadata; they
    were skipped, with advice to write the dataset as Parquet first. Feather 2 files (Arrow's
    file format, read from its footer: a compressed one from a copy) are read too."""
    saved = tmp_path / "saved"
    saved.mkdir()
    texts = [f"row {i} of the dataset" for i in range(2500)]
    table = pa.table({"id": list(range(2500)), "text": texts})
    with pa.ipc.new_stream(saved / "data-00000-of-00001.arrow", table.schema) as writer:
        for batch in table.to_batches(max_chunksize=1000):
            writer.write_batch(batch)
    (saved / "dataset_info.json").write_text('{"citation": "", "features": {}}')
    (saved / "state.json").write_text('{"_data_files": [{"filename": "data.arrow"}]}')
    with caplog.at_level(logging.WARNING):
        docs = read(tmp_path, str(saved))
    assert [d.text for d in docs] == texts
    assert docs[7].source == f"{saved / 'data-00000-of-00001.arrow'}#7"
    assert "skipped" in caplog.text and "state.json" in caplog.text
    feather = pa.table({"body": ["first text", None, "  ", "second text"]})
    import pyarrow.feather as pf

    pf.write_feather(feather, tmp_path / "t.feather", compression="uncompressed")
    with open(tmp_path / "t.feather", "rb") as plain:
        (tmp_path / "t.arrow.gz").write_bytes(gzip.compress(plain.read()))
    (tmp_path / "unnamed").write_bytes((tmp_path / "t.feather").read_bytes())  # by content
    for name in ("t.feather", "t.arrow.gz", "unnamed"):
        spec = SourceConfig(path=str(tmp_path / name), text_field="body")
        assert [d.text for d in read(tmp_path, spec)] == ["first text", "second text"], name
    with pytest.raises(InputError, match=r"t\.feather: no column 'text' \(columns: body\)"):
        read(tmp_path, str(tmp_path / "t.feather"))
    (tmp_path / "broken.arrow").write_bytes(b"\xff\xff\xff\xff\x10\x01\x00\x00")
    with pytest.raises(InputError, match=r"broken\.arrow: not a readable Arrow file or stream"):
        read(tmp_path, str(tmp_path / "broken.arrow"))


def test_a_hugging_face_cache_file_without_the_text_column_is_skipped_in_a_folder(tmp_path, caplog):
    """`Dataset.map` writes `cache-<fingerprint>.arrow` beside the dataset (a tokenized copy):
    skipped as Arrow before Arrow was read, it then failed the run as "no column 'text'"."""
    folder = tmp_path / "wikitext"
    folder.mkdir()
    table = pa.table({"text": ["one row", "another row"]})
    with pa.ipc.new_stream(folder / "wikitext-train.arrow", table.schema) as writer:
        writer.write_table(table)
    tokens = pa.table({"input_ids": [[1, 2], [3]]})
    with pa.ipc.new_stream(folder / "cache-0a1b2c3d.arrow", tokens.schema) as writer:
        writer.write_table(tokens)
    with caplog.at_level(logging.WARNING):
        assert [d.text for d in read(tmp_path, str(folder))] == ["one row", "another row"]
    assert "cache-0a1b2c3d.arrow: skipped, a Hugging Face datasets cache file without " \
           "column 'text' (columns: input_ids)" in caplog.text  # fmt: skip
    with pytest.raises(InputError, match=r"cache-0a1b2c3d\.arrow: no column 'text'"):  # named
        read(tmp_path, str(folder / "cache-0a1b2c3d.arrow"))


def test_a_saved_dataset_read_with_format_arrow_skips_its_metadata(tmp_path, caplog):
    """`format = "arrow"` on a `save_to_disk` folder failed on its dataset_info.json as "not a
    readable Arrow file (Expected to read 538970747 metadata bytes...)"."""
    saved = tmp_path / "saved"
    saved.mkdir()
    table = pa.table({"text": ["one row", "another row"]})
    with pa.ipc.new_stream(saved / "data-00000-of-00001.arrow", table.schema) as writer:
        writer.write_table(table)
    (saved / "dataset_info.json").write_text('{\n  "citation": "",\n  "features": {}\n}')
    spec = SourceConfig(path=str(saved), format="arrow")
    with caplog.at_level(logging.WARNING):
        assert [d.text for d in read(tmp_path, spec)] == ["one row", "another row"]
    assert "dataset_info.json: skipped, JSON (a dataset's metadata?)" in caplog.text
    named = SourceConfig(path=str(saved / "dataset_info.json"), format="arrow")
    with pytest.raises(InputError, match=r"dataset_info\.json: not a readable Arrow file"):
        read(tmp_path, named)


def test_a_feather_version_1_file_is_said_to_be_one(tmp_path):
    """It failed as "not a readable Arrow file or stream (Expected to read 826361158 metadata
    bytes, but only read 164)"."""
    path = tmp_path / "old.feather"
    path.write_bytes(b"FEA1" + b"\x00" * 60 + b"FEA1")
    with pytest.raises(InputError, match=r"old\.feather: a Feather version 1 file, which is "
                                         r"not read: write it again as Feather 2"):  # fmt: skip
        read(tmp_path, str(path))


def test_a_dataset_dict_folder_says_its_splits_are_read_as_one_corpus(tmp_path, caplog):
    """Its test split went into the corpus, and so maybe into train, with no word."""
    saved = tmp_path / "dd"
    for split in ("train", "test"):
        (saved / split).mkdir(parents=True)
        table = pa.table({"text": [f"{split} row {i}" for i in range(3)]})
        with pa.ipc.new_stream(saved / split / "data-00000-of-00001.arrow", table.schema) as out:
            out.write_table(table)
    (saved / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')
    with caplog.at_level(logging.WARNING):
        docs = read(tmp_path, str(saved))
    assert len(docs) == 6
    said = f"{saved}: a Hugging Face DatasetDict: its splits (test, train) are read as one corpus"
    # The split to read alone is the train one, not the first by name (test).
    assert said in caplog.text and f"({saved / 'train'}) to read it alone" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a folder above it said nothing
        assert len(read(tmp_path, str(tmp_path))) == 6
    assert f"{saved}: a Hugging Face DatasetDict: its splits (test, train)" in caplog.text


def test_a_datasets_cache_folder_says_its_cached_splits_are_read_as_one_corpus(tmp_path, caplog):
    """The `datasets` cache keeps a dataset's splits side by side, read as one corpus with no
    word; a pattern that picks one split says nothing."""
    cache = tmp_path / "cache"
    cache.mkdir()
    names = [
        "imdb-test.arrow",
        "imdb-train-00000-of-00002.arrow",
        "imdb-train-00001-of-00002.arrow",
    ]
    for name in names:
        table = pa.table({"text": [f"{name} row"]})
        with pa.ipc.new_stream(cache / name, table.schema) as out:
            out.write_table(table)
    for source in (cache, cache / "*.arrow"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert len(read(tmp_path, str(source))) == 3
        assert (
            f"{source}: cached splits of a Hugging Face dataset (test, train) are read as one "
            "corpus, which [split] divides again by its own hash (their test text may be trained "
            f"on); name one split's files ({cache / 'imdb-train*.arrow'}) to read it alone"
        ) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(read(tmp_path, str(cache / "imdb-train*.arrow"))) == 2
    assert "cached splits" not in caplog.text
    # Said once a run (sources are resolved several times), and not for two datasets' splits.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            resolve_sources([SourceConfig(path=str(cache))])
    assert caplog.text.count("cached splits") == 0  # said above, for this source
    other = tmp_path / "other"
    other.mkdir()
    for name in ("imdb-train.arrow", "squad-test.arrow"):
        (other / name).write_bytes((cache / "imdb-test.arrow").read_bytes())
    with caplog.at_level(logging.WARNING):
        assert len(resolve_sources([SourceConfig(path=str(other))])) == 2
    assert "cached splits" not in caplog.text


def test_invalid_utf8_is_an_error_naming_file_and_byte_unless_replace_is_asked(tmp_path, caplog):
    path = tmp_path / "latin1.txt"
    path.write_bytes("line one\ncaf\xe9 au lait".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.txt: invalid UTF-8 at byte 12 \(line 2\)"):
        read(tmp_path, str(path))
    with caplog.at_level(logging.WARNING):
        docs = read(tmp_path, str(path), errors="replace")
    assert docs[0].text == "line one\ncaf\ufffd au lait"
    assert "latin1.txt: invalid UTF-8 at byte 12 (line 2) replaced with U+FFFD" in caplog.text


@pytest.mark.parametrize(
    ("name", "content", "word", "where"),
    [
        (
            "notes.txt",
            "one\nshe said \u201cdon\u2019t\u201d",
            "\u201cdon\u2019t",
            "byte 13 (line 2)",
        ),
        ("rows.jsonl", '{"text": "ok"}\n{"text": "Zo\u00eb"}\n', "Zo\u00eb", "byte 12 of line 2"),
        ("rows.csv", 'id,text\n1,"fine"\n2,"Zo\u00eb"\n', "Zo\u00eb", None),
    ],
)
def test_a_windows_1252_file_is_named_as_one_with_its_word_and_the_conversion(
    tmp_path, name, content, word, where
):
    """Said as "invalid UTF-8 at byte 20" alone, the user had to guess what the file was."""
    (tmp_path / name).write_bytes(content.encode("cp1252"))
    with pytest.raises(InputError) as raised:
        read(tmp_path, str(tmp_path / name))
    message = str(raised.value)
    assert (
        f'it reads as Windows-1252 (Latin-1) there ("{word}"): convert the file to UTF-8 '
        "(iconv -f cp1252 -t utf-8) or set ingest.encoding_errors" in message
    ), message
    assert where is None or f"invalid UTF-8 at {where};" in message, message


def test_a_utf8_file_with_a_stray_byte_is_not_called_windows_1252(tmp_path):
    """Converting it would garble its valid UTF-8: only the byte is named."""
    path = tmp_path / "mixed.txt"
    path.write_bytes("na\u00efve caf\u00e9 ".encode() + b"stray \xe9 byte")
    with pytest.raises(InputError, match=r"mixed\.txt: invalid UTF-8 at byte \d+ \(line 1\); "
                                         r"fix the file or set"):  # fmt: skip
        read(tmp_path, str(path))


def test_a_utf8_text_read_whole_with_a_stray_byte_far_after_its_accents_is_not_called_1252(
    tmp_path,
):
    """Only 2 KB either side of the byte were looked at: a book's accents 5 KB before it were
    not seen, and `iconv -f cp1252` would have garbled them ("naÃ¯ve")."""
    path = tmp_path / "book.txt"
    path.write_bytes("na\u00efve caf\u00e9\n".encode() + b"plain line\n" * 500 + b"stray caf\xe9\n")
    with pytest.raises(InputError, match=r"book\.txt: invalid UTF-8 at byte \d+ \(line 502\); "
                                         r"fix the file or set"):  # fmt: skip
        read(tmp_path, str(path))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("rows.jsonl", b'{"text": "na\xc3\xafve caf\xc3\xa9"}\n{"text": "stray \xe9 byte"}\n'),
        ("rows.csv", b"id,text\n1,na\xc3\xafve caf\xc3\xa9\n2,stray \xe9byte\n"),
        ("lines.txt", b"na\xc3\xafve caf\xc3\xa9\nstray \xe9byte\n"),
    ],
)
def test_a_stray_byte_on_a_line_after_utf8_ones_is_not_called_windows_1252(tmp_path, name, content):
    """Read a line (or record) at a time, only the bad byte's line was looked at: the valid
    UTF-8 on the lines before was not seen, and converting would have garbled it."""
    (tmp_path / name).write_bytes(content)
    spec = SourceConfig(path=str(tmp_path / name), one_doc_per_line=name.endswith(".txt"))
    with pytest.raises(InputError, match=r"invalid UTF-8 at byte \d+ of (line 2|the field); "
                                         r"fix the file or set"):  # fmt: skip
        read(tmp_path, spec)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("russian.txt", "\u041f\u0440\u0438\u0432\u0435\u0442".encode("cp1251")),
        ("greek.txt", "\u039a\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1".encode("cp1253")),
        ("tokyo.jsonl", '{"text": "\u6771\u4eac"}\n'.encode("shift_jis")),
    ],
)
def test_a_cyrillic_greek_or_japanese_file_is_not_called_windows_1252(tmp_path, name, content):
    """Windows-1252 decodes nearly any byte: a Cyrillic file was said to read as it there
    ("\u00cf\u00f0\u00e8\u00e2\u00e5\u00f2"), with advice to convert it from cp1252 into garbage."""
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError) as raised:
        read(tmp_path, str(tmp_path / name))
    assert "Windows-1252" not in str(raised.value) and "fix the file or set" in str(raised.value)


def test_a_whole_file_s_replacements_are_placed_and_counted_as_lines_are(tmp_path, caplog):
    """Read whole, a file said "invalid UTF-8 replaced" once, with no place and no count."""
    path = tmp_path / "cafes.txt"
    path.write_bytes(b"".join(b"caf\xe9 number %d\n" % i for i in range(1, 6)))
    with caplog.at_level(logging.WARNING):
        docs = read(tmp_path, str(path), errors="replace")
    assert docs[0].text.count("\ufffd") == 5
    said = [r.getMessage() for r in caplog.records if "U+FFFD" in r.getMessage()]
    assert said == [
        f"{path}: invalid UTF-8 at byte 3 (line 1) replaced with U+FFFD",
        f"{path}: invalid UTF-8 at byte 17 (line 2) replaced with U+FFFD",
        f"{path}: invalid UTF-8 at byte 31 (line 3) replaced with U+FFFD",
        f"{path}: invalid text replaced with U+FFFD in 5 places in all (the first 3 named above)",
    ]


def test_truncated_bz2_names_the_file(tmp_path):
    pages = [wiki_page(f"Page {i}", f"text {i} " * 200) for i in range(20)]
    full = write_wiki_dump(tmp_path / "full.xml.bz2", pages).read_bytes()
    (tmp_path / "cut.xml.bz2").write_bytes(full[: len(full) // 2])
    with pytest.raises(InputError, match=r"cut\.xml\.bz2: the file is truncated or corrupt"):
        read(tmp_path, str(tmp_path / "cut.xml.bz2"))


def test_jsonl_line_that_is_not_json_names_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: the line is not valid JSON"):
        read(tmp_path, str(tmp_path / "bad.jsonl"))


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"text": oops}', "Expecting value at column 10"),
        ('{"text": "tab\there"}', "Invalid control character at column 14"),
    ],
)
def test_jsonl_parse_error_gives_the_column(tmp_path, line, reason):
    (tmp_path / "bad.jsonl").write_text(line + "\n")
    with pytest.raises(InputError, match=rf"bad\.jsonl:1: .*not valid JSON \({reason}\)$"):
        read(tmp_path, str(tmp_path / "bad.jsonl"))


def test_a_nested_field_is_named_by_its_dotted_path(tmp_path):
    """Crawls and API dumps nest the text (`{"content": {"text": ...}}`): it could not be read."""
    rows = [{"id": 1, "content": {"text": "first", "lang": "en"}},
            {"id": 2, "content": {"text": None}},
            {"id": 3, "content": {"text": "third"}}]  # fmt: skip
    (tmp_path / "crawl.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "crawl.json").write_text(json.dumps(rows))
    for name in ("crawl.jsonl", "crawl.json"):
        spec = SourceConfig(path=str(tmp_path / name), text_field="content.text")
        assert [d.text for d in read(tmp_path, spec)] == ["first", "third"], name
    dotted = tmp_path / "dotted.jsonl"  # a key that holds the dots itself comes first
    dotted.write_text(json.dumps({"a.b": "the key's", "a": {"b": "the path's"}}) + "\n")
    assert [d.text for d in read(tmp_path, SourceConfig(path=str(dotted), text_field="a.b"))] == [
        "the key's"
    ]
    (tmp_path / "short.jsonl").write_text('{"content": {"text": "ok"}}\n{"content": {}}\n')
    spec = SourceConfig(path=str(tmp_path / "short.jsonl"), text_field="content.text")
    with pytest.raises(InputError, match=r"short\.jsonl:2: no field 'content\.text' \(found: "
                                         r"content\); the records before it have"):  # fmt: skip
        read(tmp_path, spec)


def test_jsonl_invalid_utf8_follows_encoding_errors(tmp_path, caplog):
    path = tmp_path / "latin1.jsonl"
    # The BOM on the first line is still accepted, as before lines were decoded first.
    path.write_bytes(b'\xef\xbb\xbf{"text": "ok"}\n' + '{"text": "café"}\n'.encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.jsonl: invalid UTF-8 at byte 13 of line 2;"):
        read(tmp_path, str(path))
    with caplog.at_level(logging.WARNING):
        docs = read(tmp_path, str(path), errors="replace")
    assert [d.text for d in docs] == ["ok", "caf\ufffd"]
    assert "latin1.jsonl:2: invalid UTF-8 replaced with U+FFFD" in caplog.text


def test_jsonl_unpaired_surrogate_names_file_and_line_unless_replace_is_asked(tmp_path, caplog):
    path = tmp_path / "emoji.jsonl"
    path.write_text('{"text": "pair \\ud83d\\ude00 ok"}\n{"text": "a \\ud83d b"}\n')
    with pytest.raises(
        InputError,
        match=r"emoji\.jsonl:2: field 'text' holds an unpaired surrogate \(\\ud83d\); .*replace",
    ):
        read(tmp_path, str(path))
    with caplog.at_level(logging.WARNING):
        docs = read(tmp_path, str(path), errors="replace")
    assert [d.text for d in docs] == ["pair 😀 ok", "a \ufffd b"]
    assert all(d.text.encode("utf-8") for d in docs), "every text can be written as UTF-8"
    assert "emoji.jsonl:2: unpaired surrogate in field 'text' replaced" in caplog.text


def test_corrupt_gzip_names_the_file(tmp_path):
    data = bytearray(gzip.compress(b"some compressed text " * 50))
    data[10:12] = b"\xff\xff"  # the first deflate block header: an invalid block type
    (tmp_path / "bad.txt.gz").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"bad\.txt\.gz: the file is truncated or corrupt"):
        read(tmp_path, str(tmp_path / "bad.txt.gz"))


def test_invalid_utf16_follows_encoding_errors(tmp_path, caplog):
    path = tmp_path / "bad16.txt"
    # A high surrogate with no low one after it.
    path.write_bytes(b"\xff\xfe" + "ab".encode("utf-16-le") + b"\x3d\xd8" + "c".encode("utf-16-le"))
    with pytest.raises(InputError, match=r"bad16\.txt: invalid UTF-16 at byte 6 \(line 1\)"):
        read(tmp_path, str(path))
    with caplog.at_level(logging.WARNING):
        docs = read(tmp_path, str(path), errors="replace")
    assert [d.text for d in docs] == ["ab\ufffdc"]
    assert "bad16.txt: invalid UTF-16 at byte 6 (line 1) replaced with U+FFFD" in caplog.text


@pytest.mark.parametrize("errors", ["strict", "replace"])
def test_invalid_utf16_without_a_bom_is_placed_at_the_file_s_own_byte(tmp_path, caplog, errors):
    # The byte-order mark read in front of such a file was counted: every offset 2 too high.
    path = tmp_path / "bare16.txt"
    head = "plain text line\n".encode("utf-16-le") * 600  # past the sniff: still read as UTF-16
    path.write_bytes(head + b"\x3d\xd8" + "c".encode("utf-16-le"))
    where = rf"bare16\.txt: invalid UTF-16 at byte {len(head)} \(line 601\)"
    if errors == "strict":
        with pytest.raises(InputError, match=where):
            read(tmp_path, str(path))
        return
    with caplog.at_level(logging.WARNING):
        docs = read(tmp_path, str(path), errors="replace")
    assert docs[0].text.endswith("line\n\ufffdc")
    assert re.search(where + " replaced with U\\+FFFD", caplog.text)


def test_parquet_column_that_is_not_text_is_refused(tmp_path):
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "n.parquet")
    with pytest.raises(InputError, match=r"n\.parquet: column 'text' holds int64, not text"):
        read(tmp_path, str(tmp_path / "n.parquet"))


def test_jsonl_without_the_field_lists_the_fields_found(tmp_path):
    (tmp_path / "other.jsonl").write_text('{"body": "x", "id": 1}\n')
    with pytest.raises(InputError, match=r"other\.jsonl:1: no field 'text' \(found: body, id\); "
                       "set text_field on this source"):  # fmt: skip
        read(tmp_path, str(tmp_path / "other.jsonl"))
    # One record in the middle without it: its fault, not the source's text_field's.
    (tmp_path / "mixed.jsonl").write_text('\n{"text": "a"}\n{"text": "b"}\n{"body": "c"}\n')
    with pytest.raises(InputError, match=r"mixed\.jsonl:4: no field 'text' \(found: body\); the "
                       "records before it have 'text': fix or remove this one"):  # fmt: skip
        read(tmp_path, str(tmp_path / "mixed.jsonl"))


def test_parquet_without_the_text_column_lists_its_columns(tmp_path):
    pq.write_table(pa.table({"body": ["x"], "id": [1]}), tmp_path / "t.parquet")
    with pytest.raises(InputError, match=r"t\.parquet: no column 'text' \(columns: body, id\)"):
        read(tmp_path, str(tmp_path / "t.parquet"))


def test_unreachable_url_names_the_url(tmp_path):
    url = "http://127.0.0.1:9/corpus.txt"  # the discard port: nothing listens there
    with pytest.raises(InputError, match=r"127\.0\.0\.1:9/corpus\.txt: cannot fetch"):
        read(tmp_path, url)


def test_bz2_that_is_not_a_dump_is_read_as_compressed_text(tmp_path):
    (tmp_path / "notes.txt.bz2").write_bytes(bz2.compress(b"compressed notes"))
    assert [d.text for d in read(tmp_path, str(tmp_path / "notes.txt.bz2"))] == ["compressed notes"]


def test_gensim_names_resolve_to_the_files_datapath_names():
    from gensim.test.utils import datapath

    (item,) = resolve_sources([SourceConfig(path="gensim:lee_background.cor")])
    assert item.path == Path(datapath("lee_background.cor")).resolve()
    assert item.name == "gensim:lee_background.cor"
    with pytest.raises(InputError, match=r"gensim ships no test-data file named 'nope\.txt'"):
        resolve_sources([SourceConfig(path="gensim:nope.txt")])
    # A name that leaves the test-data folder read gensim's own code as a corpus.
    assert (Path(datapath("lee_background.cor")).parent / "../../__init__.py").is_file()
    with pytest.raises(InputError, match=r"gensim ships no test-data file named '\.\./\.\./"):
        resolve_sources([SourceConfig(path="gensim:../../__init__.py")])


# -- US Census name lists --------------------------------------------------------------------


def test_names_source_reads_a_census_list_the_names_package_ships(tmp_path):
    from lm.text.census_names import census_names_file

    path = census_names_file("dist.male.first")
    (item,) = resolve_sources([SourceConfig(path="names:dist.male.first")])
    assert item.path == path and item.name == "names:dist.male.first"
    docs = read(tmp_path, "names:dist.male.first")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert len(docs) == len(lines)
    assert [d.text for d in docs[:3]] == [line.split()[0].lower() for line in lines[:3]]
    assert docs[0].source == "names:dist.male.first:1"
    assert all(d.text.isalpha() and d.text.islower() for d in docs)


def test_a_names_source_that_leaves_the_package_folder_is_refused(tmp_path):
    """`names:../../../../etc/passwd` read any file as a census list (the `.py` check aside),
    where `gensim:` refuses a name that leaves its folder."""
    from lm.text.census_names import census_names_file

    shipped = census_names_file("dist.male.first")
    (tmp_path / "list").write_text("MARY 2.629 2.629 1\n")
    way_out = "/".join([".."] * len(shipped.parent.parts)) + str(tmp_path / "list")
    assert (shipped.parent / way_out).is_file()
    assert census_names_file(way_out) is None
    with pytest.raises(InputError, match=r"the `names` package ships no list named '\.\./"):
        resolve_sources([SourceConfig(path=f"names:{way_out}")])


def test_census_format_on_a_file_keeps_the_first_column_lowercased(tmp_path):
    (tmp_path / "people.txt").write_text(
        "MARY           2.629  2.629      1\n\nPATRICIA       1.073  3.702      2\n"
    )
    spec = SourceConfig(path=str(tmp_path / "people.txt"), format="census-names")
    docs = read(tmp_path, spec)
    assert [(d.text, d.source.rpartition(":")[2]) for d in docs] == [
        ("mary", "1"),
        ("patricia", "3"),
    ]


def test_census_line_of_another_shape_names_file_and_line(tmp_path):
    (tmp_path / "mixed.txt").write_text("MARY 2.629 2.629 1\njust a sentence here\n")
    spec = SourceConfig(path=str(tmp_path / "mixed.txt"), format="census-names")
    with pytest.raises(
        InputError, match=r"mixed\.txt:2: expected 'NAME FREQUENCY CUMULATIVE RANK'"
    ):
        read(tmp_path, spec)


def test_unknown_names_list_lists_the_ones_shipped():
    with pytest.raises(InputError, match=r"names:nope: .* no list named 'nope' \(it has: dist\."):
        resolve_sources([SourceConfig(path="names:nope")])


def test_parquet_compressed_with_zstd_or_named_otherwise_is_read(tmp_path):
    # .parquet.zst failed as "not a readable Parquet file (seek)"; .pq and .parq files were
    # skipped as binary, then "no documents found".
    pq.write_table(pa.table({"text": ["first", "second"]}), tmp_path / "a.parquet")
    data = (tmp_path / "a.parquet").read_bytes()
    (tmp_path / "b.parquet.zst").write_bytes(pa.Codec("zstd").compress(data).to_pybytes())
    (tmp_path / "c.pq").write_bytes(data)
    (tmp_path / "d.data").write_bytes(data)  # by its content
    docs = read(tmp_path, *(str(tmp_path / n) for n in ("b.parquet.zst", "c.pq", "d.data")))
    assert [(d.text, d.source.rpartition("/")[2]) for d in docs] == [
        ("first", "b.parquet.zst#0"), ("second", "b.parquet.zst#1"),
        ("first", "c.pq#0"), ("second", "c.pq#1"), ("first", "d.data#0"), ("second", "d.data#1"),
    ]  # fmt: skip


def test_a_parquet_file_with_two_columns_of_the_text_field_s_name_is_named(tmp_path):
    # pyarrow's KeyError ("Column text does not exist in schema") came out as a traceback.
    schema = pa.schema([("text", pa.string()), ("text", pa.string())])
    pq.write_table(pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], schema=schema),
                   tmp_path / "dup.parquet")  # fmt: skip
    with pytest.raises(InputError, match=r"dup\.parquet: 2 columns are named 'text'"):
        read(tmp_path, str(tmp_path / "dup.parquet"))


@pytest.mark.parametrize("suffix", [".xml", ".xml.bz2"])
def test_invalid_utf8_in_a_wikipedia_dump_follows_encoding_errors(tmp_path, caplog, suffix):
    # Both ways it was "malformed XML (not well-formed (invalid token): line 1, column N)".
    pages = [wiki_page(f"P{i}", f"Page {i} text, long enough to read. " * 40) for i in range(40)]
    write_wiki_dump(tmp_path / "w.xml", pages)
    data = (tmp_path / "w.xml").read_bytes()
    bad = data.index(b"Page 30 text") + 5
    data = data[:bad] + b"\xe9" + data[bad:]
    (tmp_path / f"bad{suffix}").write_bytes(bz2.compress(data) if suffix.endswith("bz2") else data)
    name = re.escape(f"bad{suffix}")
    with pytest.raises(InputError, match=rf"{name}: invalid UTF-8 at byte {bad}; fix the file"):
        read(tmp_path, str(tmp_path / f"bad{suffix}"))
    with caplog.at_level(logging.WARNING):
        docs = read(tmp_path, str(tmp_path / f"bad{suffix}"), errors="replace")
    assert len(docs) == 40 and docs[30].text.startswith("Page \ufffd30 text")
    assert f"bad{suffix}: invalid UTF-8 at byte {bad} replaced with U+FFFD" in caplog.text


def test_jsonl_with_lines_ended_by_a_carriage_return_alone_is_read_line_by_line(tmp_path):
    # Classic Mac OS line endings: "cr.jsonl:1: the line is not valid JSON (Extra data ...)".
    (tmp_path / "cr.jsonl").write_bytes(b'{"text": "one\\rstill one"}\r{"text": "two"}\r\rx\r')
    with pytest.raises(InputError, match=r"cr\.jsonl:4: the line is not valid JSON"):
        read(tmp_path, str(tmp_path / "cr.jsonl"))
    (tmp_path / "cr.jsonl").write_bytes(b'{"text": "one\\rstill one"}\r{"text": "two"}\r')
    docs = read(tmp_path, str(tmp_path / "cr.jsonl"))
    assert [(d.text, d.source.rpartition(":")[2]) for d in docs] == [
        ("one\rstill one", "1"), ("two", "2")
    ]  # fmt: skip


def test_parquet_named_as_json_or_csv_is_read_as_the_parquet_it_is_with_a_warning(tmp_path, caplog):
    # An export saved under the wrong name failed as "invalid UTF-8 at byte 7" (.json) or as
    # "no column 'text' (columns: PAR1...)", the file's bytes as a column name (.csv).
    pq.write_table(pa.table({"text": ["first", "second"]}), tmp_path / "a.json")
    (tmp_path / "b.csv").write_bytes((tmp_path / "a.json").read_bytes())
    with caplog.at_level(logging.WARNING):
        docs = read(tmp_path, str(tmp_path / "a.json"), str(tmp_path / "b.csv"))
    assert [(d.text, d.source.rpartition("/")[2]) for d in docs] == [
        ("first", "a.json#0"), ("second", "a.json#1"), ("first", "b.csv#0"), ("second", "b.csv#1"),
    ]  # fmt: skip
    assert "a.json: read as Parquet, which it holds (its name says JSON)" in caplog.text
    assert "b.csv: read as Parquet, which it holds (its name says CSV)" in caplog.text
    # A source's format that says otherwise failed as "invalid UTF-8 at byte 4", advising
    # encoding_errors = "replace", which would read the file as garbage.
    said = SourceConfig(path=str(tmp_path / "a.json"), format="jsonl")
    with caplog.at_level(logging.WARNING):
        assert [d.text for d in read(tmp_path, said)] == ["first", "second"]
    assert 'a.json: read as Parquet, which it holds (its source says format = "jsonl")' in (
        caplog.text
    )


def test_a_text_or_csv_starting_with_par1_is_not_read_as_parquet(tmp_path):
    # The content check ran before the name checks: "not a readable Parquet file".
    (tmp_path / "notes.csv").write_text("PAR1,text\n1,hello world\n")
    (tmp_path / "notes.txt").write_text("PAR1 is the first paragraph.")
    docs = read(tmp_path, SourceConfig(path=str(tmp_path / "notes.csv"), text_field="text"),
                str(tmp_path / "notes.txt"))  # fmt: skip
    assert [d.text for d in docs] == ["hello world", "PAR1 is the first paragraph."]


def test_jsonl_lines_ended_by_a_lone_carriage_return_place_invalid_text_on_its_line(
    tmp_path, caplog
):
    (tmp_path / "e.jsonl").write_bytes(b'{"text":"one"}\r{"text":"t\xffwo"}\r{"text":"3"}\r')
    with caplog.at_level(logging.WARNING):
        docs = read(tmp_path, str(tmp_path / "e.jsonl"), errors="replace")
    assert [d.text for d in docs] == ["one", "t\ufffdwo", "3"]
    assert "e.jsonl:2: invalid UTF-8 replaced with U+FFFD" in caplog.text


def test_a_compressed_parquet_whose_copy_finds_no_room_says_so_not_corrupt(tmp_path):
    # Unpacking to a temporary file under a file-size limit was "truncated or corrupt".
    texts = [f"document number {i} " * 10 for i in range(3000)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "a.parquet", compression="none")
    data = (tmp_path / "a.parquet").read_bytes()
    (tmp_path / "a.parquet.zst").write_bytes(pa.Codec("zstd").compress(data).to_pybytes())
    script = f"""
import resource, signal
from pathlib import Path
from tests.test_readers import read
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({len(data) // 2}, {len(data) // 2}))
try:
    read(Path({str(tmp_path)!r}), {str(tmp_path / "a.parquet.zst")!r})
except Exception as error:
    print(type(error).__name__, error)
"""
    repository = Path(__file__).resolve().parent.parent
    said = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=repository, check=True).stdout  # fmt: skip
    assert said.startswith(f"InputError {tmp_path / 'a.parquet.zst'}: unpacking it to a tempor")
    assert "set TMPDIR to a folder with room for it" in said


def test_a_dump_without_ns_tags_tells_namespaces_by_the_titles_siteinfo_names(tmp_path):
    # Exports older than 0.5 give pages no <ns>: Talk: and User: pages were kept as articles.
    siteinfo = ('<siteinfo><sitename>Old</sitename><namespaces><namespace key="0" />'
                '<namespace key="1">Talk</namespace><namespace key="2">User</namespace>'
                "</namespaces></siteinfo>")  # fmt: skip

    def page(title: str) -> str:
        text = f'<revision><text xml:space="preserve">{title} has words.</text></revision>'
        return f"<page><title>{title}</title><id>1</id>{text}</page>"

    titles = ["Alpha", "Talk:Alpha", "user:Someone", "Ali: Fear Eats the Soul"]
    xml = f"<mediawiki>{siteinfo}{''.join(page(t) for t in titles)}</mediawiki>"
    (tmp_path / "old.xml").write_text(xml)
    docs = read(tmp_path, str(tmp_path / "old.xml"))
    assert [d.source.rpartition("#")[2] for d in docs] == ["Alpha", "Ali: Fear Eats the Soul"]


def test_a_setting_the_input_s_format_never_reads_is_said_once_a_source(tmp_path, caplog):
    # A text_field on a folder of text files, one_doc_per_line on JSONL: dropped in silence.
    folder = tmp_path / "notes"
    folder.mkdir()
    for index in range(3):
        (folder / f"n{index}.txt").write_text(f"note {index}")
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n')
    sources = [SourceConfig(path=str(folder), text_field="body"),
               SourceConfig(path=str(tmp_path / "d.jsonl"), one_doc_per_line=True,
                            delimiter=";")]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        docs = read(tmp_path, *sources)
    assert len(docs) == 4
    said = [r.getMessage() for r in caplog.records if "is ignored" in r.getMessage()]
    assert len(said) == 3
    assert said[0].endswith(
        "text_field (read from JSON, JSONL, CSV, TSV, Parquet and Arrow inputs) is ignored: "
        f"this input is text (said once for the text inputs of {folder})"
    )
    assert said[1].startswith(f"{tmp_path / 'd.jsonl'}: one_doc_per_line (read from text")
    assert said[2].startswith(f"{tmp_path / 'd.jsonl'}: delimiter (read from CSV and TSV")


def test_text_lines_ended_by_a_lone_carriage_return_place_invalid_text_on_its_line(
    tmp_path, caplog
):
    (tmp_path / "t.txt").write_bytes(b"one\rtwo\rth\xffree\rfour\r")
    with caplog.at_level(logging.WARNING):
        docs = read(tmp_path, SourceConfig(path=str(tmp_path / "t.txt"), one_doc_per_line=True),
                    errors="replace")  # fmt: skip
    assert [(d.text, d.source.rpartition(":")[2]) for d in docs] == [
        ("one", "1"), ("two", "2"), ("th\ufffdree", "3"), ("four", "4")
    ]  # fmt: skip
    assert "t.txt:3: invalid UTF-8 replaced with U+FFFD" in caplog.text


def test_a_named_pipe_or_a_looping_link_given_as_a_source_is_said_for_what_it_is(tmp_path):
    """Both exist: "no such file or directory" sent people looking for them."""
    import os

    os.mkfifo(tmp_path / "pipe.txt")
    (tmp_path / "loop.txt").symlink_to("loop.txt")
    with pytest.raises(InputError, match=r"pipe\.txt: a named pipe \(FIFO\), not a file or folder"):
        resolve_sources([SourceConfig(path=str(tmp_path / "pipe.txt"))])
    with pytest.raises(InputError, match=r"loop\.txt: a link that loops back to itself"):
        resolve_sources([SourceConfig(path=str(tmp_path / "loop.txt"))])


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://h.example/a.txt?page=2", "https://h.example/a.txt?page=2"),
        ("https://u:pw@h/x?token=abc&author=me", "https://u:***@h/x?token=***&author=me"),
        ("https://ghp_abc@github.com/r.txt", "https://***@github.com/r.txt"),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=A&X-Amz-Credential=K%2F1"
            "&X-Amz-Signature=f0&X-Amz-Security-Token=t",
            "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=A&X-Amz-Credential=***"
            "&X-Amz-Signature=***&X-Amz-Security-Token=***",
        ),
        (
            "https://h/x?sig=z&api_key=1&apikey=2&key=",
            "https://h/x?sig=***&api_key=***&apikey=***&key=",
        ),
        (
            "https://h/x?__token__=a&jwt=b&credentials=c&auth_token%5B%5D=d&tokens_left=9",
            "https://h/x?__token__=***&jwt=***&credentials=***&auth_token%5B%5D=***&tokens_left=9",
        ),
        (
            "https://h/x?sessionid=a&PHPSESSID=b&authorization=c&password2=d&keys=e&page2=f"
            "#access_token=g&state=h",
            "https://h/x?sessionid=***&PHPSESSID=***&authorization=***&password2=***&keys=***"
            "&page2=f#access_token=***&state=h",
        ),
        (  # an array's entries, as PHP and Rails name them
            "https://h/x?token%5B0%5D=a&api_key[1]=b&key%5Bprimary%5D=c&page[2]=3",
            "https://h/x?token%5B0%5D=***&api_key[1]=***&key%5Bprimary%5D=***&page[2]=3",
        ),
    ],
)
def test_a_url_is_recorded_without_the_credentials_it_carries(url, shown):
    from lm.text.url_credentials import shown_url, without_url_credentials

    assert shown_url(url) == shown
    [source] = resolve_sources([SourceConfig(path=url)])
    assert source.name == shown and source.url == url  # fetched with them, named without
    assert without_url_credentials({"sources": [f"see {url} now", 3]}) == {
        "sources": [f"see {shown} now", 3]
    }


def test_a_parameter_name_of_many_marks_is_read_at_once():
    """Marks after a secret's name are read one way only: with `[]` read either as an array's
    entry or as two marks, a name of 40 `[]`s not ending as a secret's would take the pattern
    2**40 tries (a URL in any text of a run's config or error)."""
    from lm.text.url_credentials import shown_url

    url = "https://h/x?token" + "[]" * 40 + "s=1&token[][]=2"
    assert shown_url(url) == "https://h/x?token" + "[]" * 40 + "s=1&token[][]=***"


def test_one_document_per_line_strips_each_line_and_skips_blank_ones(tmp_path):
    """A line of spaces is no document, and a name is the same name with a space or a tab
    around it (an indented list, a line with trailing blanks)."""
    (tmp_path / "names.txt").write_text("  emma \n \t \n\tolivia\n")
    docs = read(tmp_path, SourceConfig(path=str(tmp_path / "names.txt"), one_doc_per_line=True))
    assert [(d.text, d.source.rpartition(":")[2]) for d in docs] == [("emma", "1"), ("olivia", "3")]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8"])
def test_a_text_of_blanks_alone_is_no_document_however_it_is_read(tmp_path, encoding):
    """A UTF-16 file is read whole (not in pieces), as is every text file where
    `ingest.max_document_mb` is 0: one of spaces and line ends alone was a blank document."""
    path = tmp_path / "blank.txt"
    path.write_bytes(" \n\n \t\n".encode(encoding))
    for max_mb in (0.0, 5.0):
        inputs = resolve_sources([SourceConfig(path=str(path))])
        docs = iter_input_documents(inputs, "strict", tmp_path / "downloads", 5.0,
                                    max_document_mb=max_mb)  # fmt: skip
        assert list(docs) == [], (encoding, max_mb)


def test_a_windows_line_after_a_lone_carriage_return_keeps_the_line_numbers(tmp_path):
    """`x\\ra\\r\\n`: a classic Mac OS line end, then a Windows one. The two lines it holds
    are lines 1 and 2, and the next line is line 3, not 4."""
    (tmp_path / "names.txt").write_bytes(b"x\ra\r\nnext\n")
    docs = read(tmp_path, SourceConfig(path=str(tmp_path / "names.txt"), one_doc_per_line=True))
    assert [(d.text, d.source.rpartition(":")[2]) for d in docs] == [
        ("x", "1"), ("a", "2"), ("next", "3"),
    ]  # fmt: skip
    (tmp_path / "d.jsonl").write_bytes(b'{"text": "x"}\r{"text": "a"}\r\n{"text": "next"}\n')
    assert [d.source.rpartition(":")[2] for d in read(tmp_path, str(tmp_path / "d.jsonl"))] == [
        "1", "2", "3",
    ]  # fmt: skip


def test_a_json_lines_record_of_blank_text_is_no_document(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "one"}\n{"text": " \\n\\t "}\n{"text": "two"}\n')
    docs = read(tmp_path, str(tmp_path / "d.jsonl"))
    assert [(d.text, d.source.rpartition(":")[2]) for d in docs] == [("one", "1"), ("two", "3")]


def test_a_page_whose_only_text_was_deleted_takes_no_text_from_the_page_before(tmp_path):
    """The latest revision's text is kept across a page's revisions, and must not outlive the
    page: the next page whose revisions all had their text deleted was read as an article
    holding the previous page's text, under its own title (a copy of another article)."""
    deleted = (
        "<page><title>Hidden</title><ns>0</ns><id>3</id>"
        '<revision><id>4</id><text deleted="deleted"/></revision></page>'
    )
    dump = write_wiki_dump(tmp_path / "w.xml", [wiki_page("Alpha", "Alpha is a letter."), deleted])
    assert [d.source.rpartition("#")[2] for d in read(tmp_path, str(dump))] == ["Alpha"]


def test_a_redirect_page_is_skipped_by_its_text_where_the_dump_has_no_redirect_tag(tmp_path):
    """Dumps older than export 0.5 mark a redirect by its text alone."""
    pages = [wiki_page("Alpha", "Alpha is a letter."), wiki_page("A", " #REDIRECT [[Alpha]]")]
    dump = write_wiki_dump(tmp_path / "w.xml", pages)
    assert [d.text for d in read(tmp_path, str(dump))] == ["Alpha is a letter."]


def test_a_file_rewritten_at_the_same_size_changes_the_inputs_fingerprint(tmp_path):
    """The ingest cache is keyed by the fingerprint: a file edited in place at the same size (a
    typo fixed) must read again, not be served the old documents."""
    import os

    path = tmp_path / "a.txt"
    path.write_text("first text")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    before = fingerprint_inputs(resolve_sources([SourceConfig(path=str(path))]))
    path.write_text("other text")  # the same size
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    assert fingerprint_inputs(resolve_sources([SourceConfig(path=str(path))])) != before


def test_only_a_temporary_failure_to_resolve_a_host_is_worth_another_try():
    """A "temporary failure in name resolution" may pass; an unknown host (a typo in the URL)
    never will: retried as transient, the run waited out its retries before saying so."""
    import socket
    import urllib.error

    from lm.text.ingest import _may_pass

    temporary = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    unknown = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert _may_pass(urllib.error.URLError(temporary))
    assert not _may_pass(urllib.error.URLError(unknown))
