"""The values of one JSON array read from a text stream one at a time.

A `.json` dataset is often one array of records (an export with `lines=False`, a scraped
dump). `json.loads` of the whole file held the file's bytes, its text and every record at once:
2.5 times the file's size (500 MB for a 200 MB array), where JSON Lines of the same records
hold one line. Here the text is read in chunks and each value is decoded by the standard
library's own decoder (`raw_decode`, C speed) as soon as it is whole, so memory holds a chunk
and the value being read, and invalid JSON is placed at the line and column `json.loads`
would name.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from typing import Protocol

READ_CHARS = 1 << 20  # characters read at a time; text before the value being read is dropped
NOT_BLANK = re.compile(r"[^ \t\n\r]")  # JSON's whitespace is these four characters alone
DECODER = json.JSONDecoder()
# What may follow a number's first characters in the same number: when the read holds nothing
# else after a value, the next read may be more of it.
NUMBER_GOING_ON = re.compile(r"[0-9.eE+-]*")
# The farthest from the end of the text read that `json` places an error a read's cut makes
# (a `\uXXXX` escape cut short); an unterminated string is placed at its start.
CUT_ERROR_REACH = 12


def beyond_python(error: Exception) -> str | None:
    """Why valid JSON could not be read, for what `json` raises besides JSONDecodeError on
    valid text: nesting deeper than Python's recursion limit, or an integer longer than
    Python converts (`sys.get_int_max_str_digits`); None for another error."""
    if isinstance(error, RecursionError):
        return "nested deeper than Python reads"
    if isinstance(error, ValueError) and "integer string conversion" in str(error):
        return f"with an integer longer than Python reads ({sys.get_int_max_str_digits()} digits)"
    return None


def _cut_by_the_read(error: json.JSONDecodeError) -> bool:
    """Whether `error` may come from the value being cut by the end of the text read, rather
    than from the text itself: an error well before the end is the text's, and reading on
    (to the end of a large file, perhaps) would not mend it."""
    near_the_end = error.pos >= len(error.doc) - CUT_ERROR_REACH
    return near_the_end or error.msg.startswith("Unterminated string")


class TextReader(Protocol):
    def read(self, size: int = -1, /) -> str: ...


class JsonArrayError(ValueError):
    """The text is not a valid JSON array: `reason` (`json`'s own words), at `line` and
    `column` (from 1). `beyond_python`: it is valid, but holds a value Python cannot read."""

    def __init__(self, reason: str, line: int, column: int, beyond_python: bool = False):
        super().__init__(f"{reason} at line {line} column {column}")
        self.reason, self.line, self.column = reason, line, column
        self.beyond_python = beyond_python


def json_array_values(text: TextReader) -> Iterator[object]:
    """Each value of the JSON array that `text` holds (blanks before it are skipped), in order.
    Raises JsonArrayError where the text stops being one, after the values before that place
    were yielded; a value is yielded only once it is whole."""
    return _ArrayReader(text).values()


class _ArrayReader:
    def __init__(self, text: TextReader):
        self.text = text
        self.buffer, self.at = "", 0  # the text read and not yet dropped; where reading is
        self.lines_dropped = 0  # newlines in the text dropped from the buffer's front
        self.columns_dropped = 0  # characters dropped after the last of those newlines
        self.ended = False

    def values(self) -> Iterator[object]:
        if self._next_char() != "[":
            raise self._error("Expecting '['")
        self.at += 1
        if self._next_char() == "]":
            self.at += 1
        else:
            while True:
                yield self._value()
                char = self._next_char()
                self.at += 1
                if char == "]":
                    break
                if char != ",":
                    self.at -= 1
                    raise self._error("Expecting ',' delimiter")
        if self._next_char():
            raise self._error("Extra data")

    def _value(self) -> object:
        self._next_char()
        while True:
            # A read may drop the text before the value (a new buffer) and yet find the end:
            # then the value is decoded again, so that its end and errors are the new buffer's.
            buffer = self.buffer
            try:
                value, end = DECODER.raw_decode(buffer, self.at)
            except json.JSONDecodeError as error:
                if _cut_by_the_read(error) and self._read_more(len(buffer) - self.at):
                    continue  # read on, at least as much again, and decode the value again
                if self.buffer is not buffer:
                    continue
                raise self._error(error.msg.removesuffix(" at"), error.pos) from None
            except (RecursionError, ValueError) as error:
                reason = beyond_python(error)
                if reason is None:
                    raise
                raise self._error(reason, beyond_python=True) from None
            if NUMBER_GOING_ON.fullmatch(buffer, end) and (
                self._read_more(READ_CHARS) or self.buffer is not buffer
            ):
                continue  # a number may go on past the read: `12` of `123`, `1` of `1.5`
            self.at = end
            return value

    def _next_char(self) -> str:
        """The next character that is not a blank, read as far as needed; "" at the end."""
        while True:
            found = NOT_BLANK.search(self.buffer, self.at)
            if found:
                self.at = found.start()
                return self.buffer[self.at]
            self.at = len(self.buffer)
            if not self._read_more(READ_CHARS):
                return ""

    def _read_more(self, at_least: int) -> bool:
        """Read `at_least` characters more (a chunk at least), first dropping the text before
        `at` once it is a chunk long; False at the end of the text."""
        if self.ended:
            return False
        if self.at >= READ_CHARS:
            dropped = self.buffer[: self.at]
            newlines = dropped.count("\n")
            if newlines:
                self.lines_dropped += newlines
                self.columns_dropped = len(dropped) - dropped.rfind("\n") - 1
            else:
                self.columns_dropped += len(dropped)
            self.buffer, self.at = self.buffer[self.at :], 0
        chunk = self.text.read(max(at_least, READ_CHARS))
        if not chunk:
            self.ended = True
            return False
        self.buffer += chunk
        return True

    def _error(
        self, reason: str, position: int | None = None, beyond_python: bool = False
    ) -> JsonArrayError:
        """The error at `position` of the buffer (`at` if None), placed as `json.loads`
        places it in the whole text: line from 1, column from 1 after the last newline."""
        position = self.at if position is None else position
        line = self.lines_dropped + self.buffer.count("\n", 0, position) + 1
        last_newline = self.buffer.rfind("\n", 0, position)
        if last_newline >= 0:
            column = position - last_newline
        else:
            column = self.columns_dropped + position + 1
        return JsonArrayError(reason, line, column, beyond_python)
