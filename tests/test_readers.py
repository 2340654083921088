"""Ingest readers: every supported format, and a clear error or warning for each bad input."""

from __future__ import annotations

import bz2
import gzip
import http.server
import json
import logging
import threading
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lm.config import SourceConfig
from lm.text.ingest import iter_input_documents
from lm.text.sources import InputError, fingerprint_inputs, resolve_sources
from tests.helpers import wiki_page, write_wiki_dump


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


def test_one_document_per_line(tmp_path):
    (tmp_path / "names.txt").write_text("emma\n\nolivia\nava\n")
    spec = SourceConfig(path=str(tmp_path / "names.txt"), one_doc_per_line=True)
    docs = read(tmp_path, spec)
    assert [d.text for d in docs] == ["emma", "olivia", "ava"]
    assert docs[1].source.endswith("names.txt:3")


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


def test_http_url_is_streamed_and_read_by_its_format(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "docs.jsonl").write_text('{"text": "from the web"}\n')
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/docs.jsonl"
        docs = read(tmp_path, url)
    finally:
        server.shutdown()
    assert [(d.text, d.source) for d in docs] == [("from the web", f"{url}:1")]
    assert not any((tmp_path / "downloads").iterdir()), "the download is removed after reading"


def test_fingerprint_changes_when_a_file_changes(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    inputs = resolve_sources([SourceConfig(path=str(tmp_path))])
    before = fingerprint_inputs(inputs)
    (tmp_path / "b.txt").write_text("two")
    assert fingerprint_inputs(resolve_sources([SourceConfig(path=str(tmp_path))])) != before


# -- bad inputs ----------------------------------------------------------------------------


def test_missing_path_names_the_path(tmp_path):
    with pytest.raises(InputError, match=r"nowhere\.txt: no such file or directory"):
        read(tmp_path, str(tmp_path / "nowhere.txt"))


def test_empty_folder_names_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: the folder contains no files"):
        read(tmp_path, str(tmp_path / "empty"))


def test_binary_file_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    (tmp_path / "image.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "real.txt").write_text("words")
    with caplog.at_level(logging.WARNING):
        docs = read(tmp_path, str(tmp_path))
    assert [d.text for d in docs] == ["words"]
    assert "image.bin: skipped, it looks like a binary file" in caplog.text


def test_invalid_utf8_is_an_error_naming_file_and_byte_unless_replace_is_asked(tmp_path, caplog):
    path = tmp_path / "latin1.txt"
    path.write_bytes("line one\ncaf\xe9 au lait".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.txt: invalid UTF-8 at byte 12 \(line 2\)"):
        read(tmp_path, str(path))
    with caplog.at_level(logging.WARNING):
        docs = read(tmp_path, str(path), errors="replace")
    assert docs[0].text == "line one\ncaf\ufffd au lait"
    assert "latin1.txt: invalid UTF-8 replaced" in caplog.text


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


def test_jsonl_without_the_field_lists_the_fields_found(tmp_path):
    (tmp_path / "other.jsonl").write_text('{"body": "x", "id": 1}\n')
    with pytest.raises(InputError, match=r"other\.jsonl:1: no field 'text' \(found: body, id\)"):
        read(tmp_path, str(tmp_path / "other.jsonl"))


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
