"""An imagefolder's metadata file (``metadata.jsonl`` or ``metadata.csv``), read with errors
that name the file and the line.

``datasets``' json and csv builders read the file quickly (Arrow), but a malformed line
fails with a ``DatasetGenerationError`` about "row 1" of some block, and bytes that are not
UTF-8 fail when a column is first read, naming neither file nor line. :func:`load_metadata`
checks the bytes are UTF-8 first (one fast pass), and when the builder fails on a JSON
Lines file it parses the lines one by one to name the first bad one. A streamed file is
parsed line by line before streaming starts: a bad line met halfway through training, in
a DataLoader worker, would stop the run there.

A malformed line stops the run with :class:`MetadataError` (a ``ValueError``, so the CLI
prints it): which rows to train on is not a guess to make for the user. Rows that parse but
cannot be used (no image, no caption, a caption that is not text) are skipped and counted
by the tables that read them.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
from datasets.exceptions import DatasetGenerationError

EXAMPLE_LINE = '{"file_name": "0001.png", "text": "a caption"}'
_CHUNK = 1 << 22


class MetadataError(ValueError):
    """A metadata file that cannot be read; the message names the file, the line and the fix."""


def load_metadata(path: Path, streaming: bool = False) -> Any:
    """``path`` (``.jsonl`` or ``.csv``) as a ``datasets`` table, streamed or not.

    Raises:
        MetadataError: A line that is not UTF-8, not one JSON object (JSON Lines), or that
            the csv reader refuses; the message names ``path:line``.
    """
    check_utf8(path)
    jsonl = path.suffix == ".jsonl"
    if jsonl and streaming:
        for _ in read_metadata_rows(path):
            pass
    try:
        return datasets.load_dataset(
            "json" if jsonl else "csv", data_files=str(path), split="train", streaming=streaming
        )
    except (DatasetGenerationError, ValueError) as err:
        if jsonl:
            for _ in read_metadata_rows(path):  # raises naming the first bad line
                pass
        cause = err.__cause__ or err
        raise MetadataError(
            f"cannot read {path}: {cause.__class__.__name__}: {str(cause).strip()}; "
            "fix the line it names, or the file's format"
        ) from None


def read_metadata_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of every non-blank line of a JSON Lines file.

    Raises:
        MetadataError: A line that is not UTF-8 or not one JSON object.
    """
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(path, number, raw, err) from None
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise MetadataError(
                    f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno}); every "
                    f"line of a metadata.jsonl is one JSON object such as {EXAMPLE_LINE}: fix "
                    "or remove the line"
                ) from None
            if not isinstance(row, dict):
                raise MetadataError(
                    f"{path}:{number}: a JSON {type(row).__name__}, not an object; every line "
                    f"of a metadata.jsonl is one JSON object such as {EXAMPLE_LINE}: fix or "
                    "remove the line"
                )
            yield number, row


def check_utf8(path: Path) -> None:
    """Raise :class:`MetadataError` naming the first line of ``path`` that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as file:
        while True:
            chunk = file.read(_CHUNK)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError:
                break
            if not chunk:
                return
    with open(path, "rb") as lines:  # find the line: slower, only for a bad file
        for number, raw in enumerate(lines, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(path, number, raw, err) from None
    raise MetadataError(f"{path}: ends inside a UTF-8 character; save the file as UTF-8")


def _not_utf8(path: Path, number: int, raw: bytes, err: UnicodeDecodeError) -> MetadataError:
    bad = raw[err.start : err.end].hex(" ")
    return MetadataError(
        f"{path}:{number}: not UTF-8 text (byte(s) {bad} at column {err.start + 1}); save the "
        "file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or fix or remove the line"
    )
