"""A JSON array read one value at a time: the values `json.loads` gives, and its errors at the
places it names, wherever the reads cut the text."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys

import pytest

from lm.text import json_array
from lm.text.json_array import JsonArrayError, json_array_values
from tests.conftest import REPO


def _values_or_error(text: str) -> list | tuple:
    try:
        return list(json_array_values(io.StringIO(text)))
    except JsonArrayError as error:
        return (error.reason, error.line, error.column)


def _expected(text: str) -> list | tuple:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        return (error.msg.removesuffix(" at"), error.lineno, error.colno)


def _random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.choice(
        ["int", "float", "str", "bool", "null", "list", "dict"][: 7 - 2 * (depth > 2)]
    )
    if kind == "int":
        return rng.randint(-(10**12), 10**12)
    if kind == "float":
        return rng.uniform(-1e6, 1e6)
    if kind == "str":
        return "".join(rng.choice('ab \n"\\é☃\t') for _ in range(rng.randint(0, 12)))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {f"k{i}": _random_value(rng, depth + 1) for i in range(rng.randint(0, 4))}


@pytest.mark.parametrize("read_chars", [1, 2, 7, 64, 1 << 20])
def test_values_and_errors_are_json_loads_own_wherever_the_reads_cut(monkeypatch, read_chars):
    """Valid arrays, and the same arrays with a character dropped, doubled or inserted: the
    values json.loads gives, or its error at its line and column (text before the value being
    read is dropped once a read's length is behind, so places must count what was dropped)."""
    monkeypatch.setattr(json_array, "READ_CHARS", read_chars)
    rng = random.Random(read_chars)
    checked = errors = 0
    for _ in range(150):
        values = [_random_value(rng) for _ in range(rng.randint(0, 6))]
        text = json.dumps(values, indent=rng.choice([None, 1, 2]), ensure_ascii=rng.random() < 0.5)
        texts = [text, f"\n  {text}\n\n"]
        for _ in range(3):
            at = rng.randrange(len(text))
            texts += [
                text[:at] + text[at + 1 :],
                text[:at] + text[at] + text[at:],
                text[:at] + rng.choice('[]{},:"1 x\n') + text[at:],
                text[:at],
            ]  # fmt: skip (the last: a file cut short, in a number, say)
        for candidate in texts:
            expected = _expected(candidate)
            if not isinstance(expected, list | tuple) or not candidate.lstrip().startswith("["):
                continue  # not an array, or a damaged one that json reads as something else
            assert _values_or_error(candidate) == expected, candidate
            checked += 1
            errors += isinstance(expected, tuple)
    assert checked > 1000 and errors > 300  # both kinds were checked, many times


@pytest.mark.parametrize("read_chars", range(1, 12))
def test_a_file_cut_short_in_a_number_is_placed_where_json_loads_places_it(monkeypatch, read_chars):
    """The read that found the end also dropped the text before the number: its end was
    taken in the old text's places, and the error came a column late."""
    monkeypatch.setattr(json_array, "READ_CHARS", read_chars)
    for text in ["[1.", '["abcdef", 12e', "[10000000, 2.", "[1, 2, 3, 45.", "[0, -", "[7e+"]:
        assert _values_or_error(text) == _expected(text), text


def test_values_before_an_error_are_yielded_and_then_the_error_names_its_place():
    values = json_array_values(io.StringIO('[{"text": "a"},\n {"text": "b"},\n {"text": }]'))
    assert next(values) == {"text": "a"} and next(values) == {"text": "b"}
    with pytest.raises(JsonArrayError, match="Expecting value at line 3 column 11"):
        next(values)


MEMORY_PROBE = """
import io, itertools, json, resource, sys
from lm.text.json_array import json_array_values

records = 20_000
record = json.dumps({"text": "word " * 2000})  # 10 kB each: 200 MB of JSON in all


class Generated(io.TextIOBase):
    '''The array's text made as it is read, so that no copy of it sits in memory.'''

    def __init__(self):
        body = (("," if i else "") + record for i in range(records))
        self.parts = itertools.chain("[", body, "]")
        self.left = ""

    def read(self, size=-1):
        if size < 0:
            return self.left + "".join(self.parts)
        while len(self.left) < size and (part := next(self.parts, None)) is not None:
            self.left += part
        taken, self.left = self.left[:size], self.left[size:]
        return taken


before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
count = sum(len(value["text"]) for value in json_array_values(Generated()))
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(count, grown // 1024)
"""


def test_reading_a_large_array_holds_a_value_at_a_time_not_the_array():
    """200 MB of records, read in a process of its own: memory grows by a few MB (a read and
    the value being read), where json.loads of the whole text held every record."""
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True,
                            text=True, check=True, cwd=REPO, timeout=300)  # fmt: skip
    count, grown_mb = map(int, result.stdout.split())
    assert count == 20_000 * 10_000
    assert grown_mb < 50, f"peak memory grew by {grown_mb} MB"


READER_PROBE = """
import sys, tracemalloc
from lm.config import SourceConfig
from lm.text.readers import read_documents
from lm.text.sources import resolve_sources

[item] = resolve_sources([SourceConfig(path=sys.argv[1])])
tracemalloc.start()  # Python's own allocations: what the reader holds, not the imports' pages
with open(sys.argv[1], "rb") as raw:
    count = sum(len(document.text) for document in read_documents(item, raw, "strict"))
print(count, tracemalloc.get_traced_memory()[1] >> 20)
"""


def test_a_json_array_file_is_read_by_the_reader_a_record_at_a_time(tmp_path):
    """The `.json` reader itself streams (json.loads of the file held bytes, text and every
    record: 2.5 times the file's size)."""
    path = tmp_path / "records.json"
    record = json.dumps({"text": "word " * 2000, "id": 1})
    with open(path, "w") as out:
        out.write("[" + ",\n".join(record for _ in range(6000)) + "]")  # 60 MB
    result = subprocess.run([sys.executable, "-c", READER_PROBE, str(path)], capture_output=True,
                            text=True, check=True, cwd=REPO, timeout=300)  # fmt: skip
    count, grown_mb = map(int, result.stdout.split())
    assert count == 6000 * 10_000
    assert grown_mb < 20, f"the reader held {grown_mb} MB at its peak reading a 60 MB array"
