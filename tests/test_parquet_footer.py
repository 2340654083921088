"""The footer digest of a Parquet file lmforge wrote (`storage.parquet_footer`): recorded as the
output is published, checked before pyarrow opens the file, by every reader of a corpus; and
a file nothing recorded (an earlier version's, one not yet published) read as it is."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.artifacts import write_manifest
from storage.corpus import RAW_SCHEMA, CorpusError, DocumentWriter, open_parquet, row_count
from storage.parquet_footer import FOOTERS, footer


def written(folder, rows: int = 3):
    """A published-looking folder holding one Parquet file of `rows` rows, and its manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "documents.parquet"
    with DocumentWriter(path, RAW_SCHEMA) as writer:
        for number in range(rows):
            writer.write({"source": "s", "source_file": "f", "markup": "text",
                          "text": f"text {number}", "part_of": None})  # fmt: skip
    write_manifest(folder)
    return path


def test_a_parquet_file_of_no_rows_has_its_footer_recorded(tmp_path):
    # Magic, footer, tail and nothing else: the footer is all of the file after its first 4 bytes.
    path = written(tmp_path / "out", rows=0)
    assert footer(path)[0] == path.stat().st_size - 4
    assert json.loads((path.parent / "manifest.json").read_text())[FOOTERS]["documents.parquet"]


@pytest.mark.parametrize(
    "manifest",
    [None, {"files": {}}, {"files": {}, FOOTERS: {"other.parquet": [40, "x"]}},
     {"files": {}, FOOTERS: {"documents.parquet": None}}, "not json {"],
)  # fmt: skip
def test_a_file_whose_footer_nothing_recorded_is_read_unchecked(tmp_path, manifest):
    """Outputs published before footers were recorded, or a file still being built, carry no
    footer's digest: read as before, never a KeyError or JSONDecodeError."""
    path = written(tmp_path / "out")
    saved = path.parent / "manifest.json"
    if manifest is None:
        saved.unlink()
    else:
        saved.write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    assert row_count(path) == 3


def test_a_file_cut_shorter_than_its_footer_is_named_as_damage(tmp_path):
    path = written(tmp_path / "out")
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(CorpusError, match=r"documents.parquet: damaged, .*longer than the file"):
        open_parquet(path)


def test_the_shuffled_split_checks_the_footer_before_pyarrow_reads_it(tmp_path):
    """`split.shuffle` reads the corpus with `pq.read_table`, not `open_parquet`: a few changed
    footer bytes ended the process (C++ `std::terminate`) unless the digest is checked first."""
    from tasks.encode import _iter_split_texts_by_doc_id

    folder = tmp_path / "clean-k"
    folder.mkdir()
    path = folder / "documents.parquet"
    table = pa.table({"doc_id": ["b", "a"], "text": ["two", "one"], "split": ["train"] * 2,
                      "keep": [True, True]})  # fmt: skip
    pq.write_table(table, path)
    write_manifest(folder)
    assert list(_iter_split_texts_by_doc_id(path, "train")) == [["one", "two"]]
    whole = bytearray(path.read_bytes())
    whole[len(whole) - 8 - int.from_bytes(whole[-8:-4], "little") // 2] ^= 0x10
    path.write_bytes(whole)
    with pytest.raises(CorpusError, match="sha256 differs"):
        list(_iter_split_texts_by_doc_id(path, "train"))
