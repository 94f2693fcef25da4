"""Read a data source into a ``datasets.Dataset``, as the file has it (no schema, no renaming).

Sources: a file (csv, tsv, json, jsonl, parquet, xlsx, txt, pkl, and ``.gz`` of each), a glob of
files of one format (concatenated in sorted order), a folder written by ``Dataset.save_to_disk``,
a hub dataset id (only when ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` is unset), or an
in-memory ``Dataset`` / ``DatasetDict``.

Invariants of what comes back:
- csv, tsv, txt, stsb and xlsx columns are strings: nothing is turned into NaN or a number ("NA",
  "null", "1.0" stay text). Types are the task schema's business (``data_utils.schemas``).
- json/jsonl/parquet/pkl columns keep their own types; a column mixing scalar types is read as
  strings, one mixing scalars with lists or objects is an error.
- The user's files are only read (never written, no cache files beside them).
- ``ReadResult.locate(i)`` turns a 0-based record index into the file and 1-based row a person
  finds in an editor: the data row for csv/tsv/xlsx (header not counted), the line for txt/jsonl.
- txt is one sentence per line in column ``text``; ``header=true`` skips line 1, and a ``sep`` reads
  the .txt as delimited (with a header row unless ``header=false``). A line 1 that looks like a column
  name is logged as a warning.
- ``format='stsb'`` (the STS Benchmark release: tab-separated, no header, quotes are text) names the
  columns genre, filename, year, id, score, sentence1, sentence2 (further fields keep their position
  names '7', '8', ...); ``is_stsb_release_file`` detects that layout.

csv/tsv use the standard library ``csv`` module rather than ``pandas.read_csv``: with
``keep_default_na=False`` pandas pads a short row with "" and the row would pass unnoticed.
csv, tsv, txt and stsb files are streamed (decompressed and decoded incrementally, turned into
Arrow every ``_BATCH_ROWS`` records), so memory holds the Arrow table plus one batch, never the
file's text or a Python object per cell. A decoding error re-reads the file whole to name its byte
offset and line.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import gc
import glob
import gzip
import io
import json
import logging
import os
import pickle
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetDict, concatenate_datasets
from datasets.fingerprint import generate_random_fingerprint
from datasets.table import InMemoryTable

from data_utils.options import READ_OPTIONS, as_header, as_separator, reject_unknown
from lorasmith.errors import DataError

logger = logging.getLogger(__name__)

EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".xlsx": "xlsx",
    ".txt": "txt",
    ".pkl": "pkl",
    ".pickle": "pkl",
}
FORMATS = (*dict.fromkeys(EXTENSIONS.values()), "stsb")
STSB_COLUMNS = ("genre", "filename", "year", "id", "score", "sentence1", "sentence2")
_TEXT_FORMATS = ("csv", "tsv", "json", "jsonl", "txt", "stsb")
_STREAMED_FORMATS = ("csv", "tsv", "txt", "stsb")
_BATCH_ROWS = 65_536
_HEAD_BYTES = 65_536
_HEADER_WORDS = {"text", "texts", "sentence", "sentences", "query", "anchor", "positive", "document", "passage"}
_BINARY_MAGICS = (b"PAR1", b"PK\x03\x04", b"\xd0\xcf\x11\xe0", b"\x80", b"\x1f\x8b")
_QUOTING = {"minimal": csv.QUOTE_MINIMAL, "none": csv.QUOTE_NONE}
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_MAX_LISTED_ROWS = 10

csv.field_size_limit(2**31 - 1)


@dataclass(frozen=True)
class FileRows:
    """Rows that came from one file; ``row_numbers[i]`` is record i's row when not simply i + 1."""

    name: str
    num_rows: int
    row_numbers: Sequence[int] | None = None


@dataclass(frozen=True)
class ReadResult:
    """A dataset as read, plus where each of its records came from (for error messages)."""

    dataset: Dataset
    source: str
    files: tuple[FileRows, ...]

    def values(self, column: str) -> list:
        """Column ``column`` as a Python list."""
        return column_values(self.dataset, column)

    def locate(self, index: int) -> tuple[str, int]:
        """0-based record index -> (file name, 1-based row or line in that file)."""
        for part in self.files:
            if index < part.num_rows:
                return part.name, part.row_numbers[index] if part.row_numbers else index + 1
            index -= part.num_rows
        raise IndexError(index)

    def describe_rows(self, indices: Sequence[int]) -> str:
        """Rows as "7, 12, 40" for one file; "a.csv row 7, b.csv row 2" across files; at most 10 listed."""
        shown = [self.locate(i) for i in indices[:_MAX_LISTED_ROWS]]
        if len(self.files) == 1:
            text = ", ".join(str(row) for _, row in shown)
        else:
            text = ", ".join(f"{name} row {row}" for name, row in shown)
        return text + (", ..." if len(indices) > _MAX_LISTED_ROWS else "")


def column_values(dataset: Dataset, column: str) -> list:
    """``dataset[column]`` as a Python list, read through arrow (``dataset[column]`` decodes row by row)."""
    return dataset.select_columns([column]).with_format("arrow")[:].column(column).to_pylist()


def read(source, **options) -> ReadResult:
    """Read ``source`` (see module docstring) with the ``READ_OPTIONS`` given; raise ``DataError``."""
    reject_unknown(options, READ_OPTIONS, "reading data")
    if isinstance(source, DatasetDict):
        source = _pick_split(source, options.get("split"), "<in-memory DatasetDict>")
    if isinstance(source, Dataset):
        return _whole(_non_empty(source, "<in-memory dataset>"), "<in-memory dataset>")
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return _whole(_read_saved_folder(path, options), text)
    if path.is_file():
        return _read_file(path, text, options)
    if glob.has_magic(text):
        return _read_glob(text, options)
    if _HUB_ID.fullmatch(text) and path.suffix.lower() not in EXTENSIONS and not text.endswith(".gz"):
        return _whole(_read_hub(text, options), text)
    raise _missing_file(path, text)


def file_format(path: Path, override: str | None = None) -> str:
    """The format name of ``path`` from its extension (``.gz`` stripped) or ``override``."""
    if override is not None:
        if override not in FORMATS:
            raise DataError(
                f"unknown format '{override}'", source=str(path), expected=f"one of {', '.join(FORMATS)}"
            )
        return override
    name = path.name.lower().removesuffix(".gz")
    suffix = Path(name).suffix
    if suffix not in EXTENSIONS:
        raise DataError(
            f"unsupported file type '{suffix or path.name}'",
            source=str(path),
            expected=f"one of {', '.join(EXTENSIONS)} (optionally .gz), or pass format=...",
        )
    return EXTENSIONS[suffix]


def _whole(dataset: Dataset, name: str) -> ReadResult:
    return ReadResult(dataset, name, (FileRows(name, dataset.num_rows),))


def _non_empty(dataset: Dataset, name: str) -> Dataset:
    if dataset.num_rows == 0:
        raise DataError("has no rows", source=name)
    return dataset


# ---------------------------------------------------------------- sources other than one file


def _missing_file(path: Path, name: str) -> DataError:
    folder = path.parent
    if not folder.is_dir():
        hint = f" (the folder '{folder}' does not exist either)"
    else:
        siblings = sorted(entry.name for entry in folder.iterdir() if not entry.name.startswith("."))
        close = difflib.get_close_matches(path.name, siblings, n=3, cutoff=0.5)
        if close:
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?"
        else:
            hint = f"; '{folder}' holds: {', '.join(siblings[:10]) or '(nothing)'}"
    offline = [variable for variable in _OFFLINE_VARIABLES if _is_set(variable)]
    if offline and _HUB_ID.fullmatch(name):
        hint += f" (not looked up as a hub dataset id: {offline[0]} is set, offline)"
    return DataError("not a file or folder" + hint, source=name)


def _is_set(variable: str) -> bool:
    return os.environ.get(variable, "").strip().lower() not in ("", "0", "false", "no", "off")


def _read_hub(name: str, options: dict) -> Dataset:
    offline = [variable for variable in _OFFLINE_VARIABLES if _is_set(variable)]
    if offline:
        raise _missing_file(Path(name), name)
    from datasets import load_dataset

    split = options.get("split", "train")
    try:
        dataset = load_dataset(name, split=split)
    except Exception as error:  # noqa: BLE001 - any hub failure is reported to the user as data error
        raise DataError(
            f"not a local file, and loading it as a hub dataset (split '{split}') failed: "
            f"{type(error).__name__}: {error}",
            source=name,
        ) from error
    return _non_empty(dataset, name)


def _pick_split(datasets: DatasetDict, split: str | None, name: str) -> Dataset:
    if split is None:
        if len(datasets) == 1:
            return next(iter(datasets.values()))
        split = "train"
    if split not in datasets:
        raise DataError(
            f"has no split '{split}'",
            source=name,
            expected=f"split= one of {', '.join(datasets) or '(none)'}",
        )
    return datasets[split]


def _read_saved_folder(path: Path, options: dict) -> Dataset:
    from datasets import load_from_disk

    if not any((path / marker).is_file() for marker in ("state.json", "dataset_dict.json")):
        entries = sorted(entry.name for entry in path.iterdir())[:10]
        raise DataError(
            "is a folder but not one written by Dataset.save_to_disk "
            f"(it holds: {', '.join(entries) or 'nothing'})",
            source=str(path),
            expected=f"a file, a glob such as '{path}/*.csv', or a save_to_disk folder",
        )
    loaded = load_from_disk(str(path))
    if isinstance(loaded, DatasetDict):
        loaded = _pick_split(loaded, options.get("split"), str(path))
    return _non_empty(loaded, str(path))


def _read_glob(pattern: str, options: dict) -> ReadResult:
    paths = sorted(Path(match) for match in glob.glob(os.path.expanduser(pattern), recursive=True))
    paths = [path for path in paths if path.is_file()]
    if not paths:
        raise DataError("the glob matches no files", source=pattern)
    formats = {str(path): file_format(path, options.get("format")) for path in paths}
    if len(set(formats.values())) > 1:
        listing = ", ".join(f"{name} ({fmt})" for name, fmt in formats.items())
        raise DataError(f"the glob matches files of different formats: {listing}", source=pattern)
    parts = [_read_file(path, str(path), options) for path in paths]
    first = parts[0]
    for part in parts[1:]:
        if part.dataset.column_names != first.dataset.column_names:
            raise DataError(
                f"has columns ({', '.join(part.dataset.column_names)}) but {first.source} has "
                f"({', '.join(first.dataset.column_names)}); every file of a glob needs the same columns",
                source=part.source,
            )
    try:
        dataset = concatenate_datasets([part.dataset for part in parts])
    except ValueError as error:
        raise DataError(
            f"the files of the glob have different column types: {error}", source=pattern
        ) from error
    return ReadResult(dataset, pattern, tuple(rows for part in parts for rows in part.files))


# ---------------------------------------------------------------- one file


def _read_file(path: Path, name: str, options: dict) -> ReadResult:
    fmt = file_format(path, options.get("format"))
    if fmt == "txt" and "sep" in options:
        fmt = "csv"  # a delimited .txt, as several dataset releases ship
    if fmt in _STREAMED_FORMATS:
        head = _head(path, name)
        if not head.strip() and _is_blank(path, name):
            raise DataError("the file is empty", source=name)
        content = head
    else:
        content = _raw(path, name)
        if not content.strip():
            raise DataError("the file is empty", source=name)
    default_encoding = str(options.get("encoding", "utf-8")).lower().replace("_", "-") in ("utf-8", "utf8")
    if fmt in _TEXT_FORMATS and (
        content.startswith(_BINARY_MAGICS) or (default_encoding and b"\x00" in content[:4096])
    ):
        raise _content_mismatch(content, name, fmt)
    if fmt in _STREAMED_FORMATS:
        if fmt != "txt" and _sniff(head) == "JSON":
            raise _content_mismatch(head, name, fmt)
        table = _read_delimited_arrow(path, name, options, fmt) if fmt in ("csv", "tsv") else None
        table, row_numbers = (table, None) if table is not None else _read_streamed(fmt, path, head, name, options)
    else:
        table, row_numbers = _READERS[fmt](content, name, options)
    if table.num_rows == 0:
        raise DataError("has no data rows", source=name)
    dataset = Dataset(InMemoryTable(table), fingerprint=generate_random_fingerprint())  # no hash of the data
    return ReadResult(dataset, name, (FileRows(name, table.num_rows, row_numbers),))


def _is_gz(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def _raw(path: Path, name: str) -> bytes:
    """The whole (decompressed) content of ``path``."""
    try:
        raw = path.read_bytes()
        if _is_gz(path):
            _check_gzip_magic(raw, name)
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as error:
        raise _read_failure(error, path, name) from error
    return raw


def _read_failure(error: OSError | EOFError, path: Path, name: str) -> DataError:
    """The DataError for a read that failed: a file this user may not read, a damaged gzip stream (only a
    ``.gz`` can be one), or another operating-system error, in words."""
    if isinstance(error, PermissionError):
        return DataError(
            "cannot be read: permission denied", source=name, expected="a file this user may read (see ls -l)"
        )
    if _is_gz(path) and not isinstance(error, (FileNotFoundError, IsADirectoryError)):
        return DataError(f"is a damaged gzip file: {error}", source=name)
    return DataError(f"cannot be read: {getattr(error, 'strerror', None) or error}", source=name)


def _check_gzip_magic(raw: bytes, name: str) -> None:
    if raw[:2] != b"\x1f\x8b":
        raise DataError(f"is named .gz but is not gzip-compressed (it looks like {_sniff(raw)})", source=name)


def _open_binary(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if _is_gz(path) else path.open("rb")


def _head(path: Path, name: str) -> bytes:
    """The first ``_HEAD_BYTES`` of the (decompressed) content, for sniffing and the first line."""
    try:
        if _is_gz(path):
            with path.open("rb") as stream:
                _check_gzip_magic(stream.read(_HEAD_BYTES), name)
        with _open_binary(path) as stream:
            return stream.read(_HEAD_BYTES)
    except (OSError, EOFError) as error:
        raise _read_failure(error, path, name) from error


def _is_blank(path: Path, name: str) -> bool:
    """The whole content is whitespace (read in chunks)."""
    try:
        with _open_binary(path) as stream:
            return all(not chunk.strip() for chunk in iter(lambda: stream.read(1 << 20), b""))
    except (OSError, EOFError) as error:
        raise _read_failure(error, path, name) from error


def _text_encoding(options: dict) -> str:
    encoding = str(options.get("encoding", "utf-8"))
    return "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding


def _decode_head(head: bytes, path: Path, name: str, options: dict) -> str:
    """``head`` decoded (a character cut at its end is left out); a decoding error is reported as ``_decode``
    reports it for the whole file."""
    try:
        decoder = codecs.getincrementaldecoder(_text_encoding(options))()
    except LookupError as error:
        raise DataError(f"unknown encoding '{options.get('encoding')}'", source=name) from error
    try:
        return decoder.decode(head, final=False)
    except UnicodeDecodeError:
        _decode(_raw(path, name), name, options)
        raise


def _read_streamed(fmt: str, path: Path, head: bytes, name: str, options: dict):
    """Run the reader of ``fmt`` over the decoded lines of ``path``; a decoding or gzip error becomes the
    ``DataError`` that names where it is."""
    reader, newline = _STREAM_READERS[fmt]
    first_line = _decode_head(head, path, name, options).lstrip("\r\n").split("\n", 1)[0]
    try:
        with io.TextIOWrapper(_open_binary(path), encoding=_text_encoding(options), newline=newline) as lines:
            return reader(lines, first_line, name, options)
    except UnicodeDecodeError:
        _decode(_raw(path, name), name, options)
        raise
    except (OSError, EOFError) as error:
        raise _read_failure(error, path, name) from error


def _sniff(raw: bytes) -> str:
    """A few words on what ``raw`` looks like, for "content does not match extension" messages."""
    magics = {
        b"PAR1": "a parquet file",
        b"PK\x03\x04": "a zip archive (an .xlsx file is one)",
        b"\xd0\xcf\x11\xe0": "an old Excel .xls file",
        b"\x1f\x8b": "gzip-compressed data",
        b"\x80": "a Python pickle",
        b"\xff\xfe": "UTF-16 text (pass encoding='utf-16' or re-encode it as UTF-8)",
        b"\xfe\xff": "UTF-16 text (pass encoding='utf-16' or re-encode it as UTF-8)",
    }
    for magic, kind in magics.items():
        if raw.startswith(magic):
            return kind
    head = raw[:4096].decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    first_line = head.split("\n", 1)[0]
    if "\x00" in head:
        return "binary data"
    if head.startswith(("{", "[")):
        return "JSON"
    if "\t" in first_line:
        return "tab-separated text (TSV)"
    if "," in first_line:
        return "comma-separated text (CSV)"
    return "plain text"


def _content_mismatch(raw: bytes, name: str, fmt: str) -> DataError:
    return DataError(
        f"the content does not match the .{fmt} extension: it looks like {_sniff(raw)}",
        source=name,
        expected=f"{fmt} content; rename the file to its real type or pass format=...",
    )


def _decode(raw: bytes, name: str, options: dict) -> str:
    encoding = options.get("encoding", "utf-8")
    try:
        text = raw.decode(
            "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
        )
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(
            f"is not valid {encoding}: byte {raw[error.start : error.end]!r} at byte offset {error.start} "
            f"(line {line})",
            source=name,
            expected=f"{encoding} text; re-encode the file (e.g. `iconv -f latin1 -t utf-8 IN > OUT`) "
            "or pass encoding='latin-1' (or the file's real encoding)",
        ) from error
    except LookupError as error:
        raise DataError(f"unknown encoding '{encoding}'", source=name) from error
    return text


def _string_columns(width: int, records: Sequence[Sequence[str]]) -> list[pa.Array]:
    """``width`` string arrays from row-major records; short records are padded with null."""
    if all(len(record) == width for record in records):
        columns = ([record[j] for record in records] for j in range(width))
    else:
        columns = ([record[j] if j < len(record) else None for record in records] for j in range(width))
    return [pa.array(column, type=pa.string()) for column in columns]


def _string_table(columns: Sequence[str], records: Sequence[Sequence[str]]) -> pa.Table:
    """Column-major string table from row-major records; short records are padded with null."""
    return pa.table(dict(zip(columns, _string_columns(len(columns), records), strict=True)))


def _typed_table(columns: dict[str, list], name: str, row_numbers: Sequence[int] | None) -> pa.Table:
    """Table with one inferred arrow type per column. A column mixing scalar types (``1`` and
    ``"pos"``) becomes a string column; one mixing scalars with lists or objects is a ``DataError``."""
    arrays = {}
    for column, values in columns.items():
        try:
            arrays[column] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            if all(value is None or isinstance(value, (str, int, float)) for value in values):
                arrays[column] = pa.array(
                    [None if value is None else str(value) for value in values], pa.string()
                )
                continue
            first_row_of_type: dict[str, int] = {}
            for i, value in enumerate(values):
                if value is not None:
                    first_row_of_type.setdefault(
                        type(value).__name__, row_numbers[i] if row_numbers else i + 1
                    )
            seen = ", ".join(f"{kind} (first in row {row})" for kind, row in first_row_of_type.items())
            raise DataError(
                f"the column mixes value types: {seen}",
                source=name,
                row=list(first_row_of_type.values())[1],
                column=column,
                expected="one type per column",
            ) from error
    return pa.table(arrays)


def _read_delimited_arrow(path: Path, name: str, options: dict, fmt: str) -> pa.Table | None:
    """The table ``_read_delimited`` would return, parsed by ``pyarrow.csv`` (C++, several threads), or
    ``None`` where the two could differ or the file needs a message: a quote character in any field
    under minimal quoting (Python's strict quote rules), rows of unequal width, a header with empty or
    repeated names or no data rows, bytes that are not valid in the encoding. Then the Python reader
    runs and says exactly what it always said."""
    import pyarrow.csv as pcsv

    sep = as_separator(options["sep"]) if "sep" in options else {"csv": ",", "tsv": "\t"}[fmt]
    header = as_header(options.get("header", True))
    quoting = str(options.get("quoting", "minimal")).lower()
    if quoting not in _QUOTING:
        return None
    first = _decode_head(_head(path, name), path, name, options).lstrip("\r\n").split("\n", 1)[0]
    _reject_wrong_delimiter(first, name, sep)
    width = first.count(sep) + 1
    generated = [f"f{j}" for j in range(width)]
    try:
        with pa.input_stream(str(path), compression="gzip" if _is_gz(path) else None) as stream:
            table = pcsv.read_csv(
                stream,
                read_options=pcsv.ReadOptions(column_names=generated, encoding=_arrow_encoding(options)),
                parse_options=pcsv.ParseOptions(delimiter=sep, quote_char=False, newlines_in_values=False),
                convert_options=pcsv.ConvertOptions(
                    column_types=dict.fromkeys(generated, pa.string()), strings_can_be_null=False
                ),
            )
    except (pa.ArrowInvalid, UnicodeError, OSError, EOFError):
        return None
    if quoting == "minimal" and _holds_byte(table, ord('"')):
        return None
    if not header:
        return table.rename_columns([str(j) for j in range(width)])
    names = [table.column(j)[0].as_py() if table.num_rows else "" for j in range(width)]
    if table.num_rows < 2 or not all(names) or len(set(names)) < width:
        return None
    return table.slice(1).rename_columns(names)


def _holds_byte(table: pa.Table, byte: int) -> bool:
    """Some string of ``table`` may hold ``byte``: its columns' character buffers are scanned whole (a
    buffer can hold bytes beyond its array's slice, so True can be a false alarm, never False one)."""
    return any(
        np.any(np.frombuffer(chunk.buffers()[2], dtype=np.uint8) == byte)
        for column in table.columns
        for chunk in column.chunks
        if chunk.buffers()[2] is not None
    )


def _arrow_encoding(options: dict) -> str:
    """``pyarrow.csv``'s spelling: "utf8" reads natively (a byte-order mark is skipped), others transcode."""
    encoding = _text_encoding(options)
    return "utf8" if encoding == "utf-8-sig" else encoding


class _DelimitedBatches:
    """Records of a delimited file, taken in batches: header, widths, a sample for hints, Arrow columns.

    Records of the wrong width are only counted (the first one kept) so that one error lists them all."""

    def __init__(self, header: bool):
        self.header = header
        self.columns: list[str] | None = None
        self.batches: list[list[pa.Array]] = []
        self.ragged: list[int] = []  # 0-based data records whose width differs from the header's
        self.first_ragged: list[str] = []
        self.sample: list[list[str]] = []  # the first data records, for hints
        self.count = 0  # data records so far
        self.width = 0  # widest record (header false)

    def add(self, chunk: list[list[str]]) -> None:
        records = [record for record in chunk if record]  # a blank line is no record
        if self.header and self.columns is None and records:
            self.columns = records.pop(0)
        self.sample += records[: 50 - len(self.sample)]
        width = len(self.columns) if self.header and self.columns is not None else max(map(len, records), default=0)
        if self.header:
            bad = [i for i, record in enumerate(records) if len(record) != width]
            if bad and not self.ragged:
                self.first_ragged = records[bad[0]]
            self.ragged += [self.count + i for i in bad]
        if records and not self.ragged:
            self.batches.append(_string_columns(width, records))
        self.width = max(self.width, width)
        self.count += len(records)


def _read_delimited(
    lines: Iterable[str], first_line: str, name: str, options: dict, default_sep: str
) -> tuple[pa.Table, None]:
    """Stream ``lines`` through ``csv.reader`` into Arrow batches of ``_BATCH_ROWS`` records."""
    sep = as_separator(options["sep"]) if "sep" in options else default_sep
    _reject_wrong_delimiter(first_line, name, sep)
    header = as_header(options.get("header", True))
    quoting_name = str(options.get("quoting", "minimal")).lower()
    if quoting_name not in _QUOTING:
        raise DataError(f"unknown quoting '{quoting_name}'", source=name, expected="'minimal' or 'none'")
    reader = csv.reader(lines, delimiter=sep, quoting=_QUOTING[quoting_name], strict=True)
    batches = _DelimitedBatches(header)
    chunk: list[list[str]] = []
    last_line = 0
    collecting = gc.isenabled()
    gc.disable()  # millions of small lists would trigger a full collection every few thousand records
    try:
        for record in reader:
            last_line = reader.line_num
            chunk.append(record)
            if len(chunk) == _BATCH_ROWS:
                batches.add(chunk)
                chunk = []
        batches.add(chunk)
    except csv.Error as error:
        raise DataError(
            f"cannot split line {last_line + 1} into fields: {error}",
            source=name,
            expected="balanced quotes around fields; if quote characters are part of the text, pass quoting='none'",
        ) from error
    finally:
        if collecting:
            gc.enable()
    columns = batches.columns
    if batches.count == 0 and columns is None:
        raise DataError("the file is empty", source=name)
    if header:
        if batches.count == 0:
            raise DataError(f"has a header ({', '.join(columns)}) but no data rows", source=name)
        columns = [column if column else f"Unnamed: {j}" for j, column in enumerate(columns)]
        duplicated = sorted({column for column in columns if columns.count(column) > 1})
        if duplicated:
            raise DataError(f"the header names column(s) {', '.join(duplicated)} more than once", source=name)
        _reject_ragged(batches.ragged, batches.first_ragged, batches.sample, columns, name, sep, quoting_name)
    else:
        columns = [str(j) for j in range(batches.width)]
    padded = [
        batch + [pa.nulls(len(batch[0]), pa.string())] * (len(columns) - len(batch)) for batch in batches.batches
    ]
    return pa.Table.from_batches(
        [pa.RecordBatch.from_arrays(batch, names=columns) for batch in padded],
        schema=pa.schema([(column, pa.string()) for column in columns]),
    ), None


def _reject_wrong_delimiter(first_line: str, name: str, sep: str) -> None:
    """The first line splits on the other usual delimiter and not on ``sep``: the wrong one was chosen."""
    other = {",": "\t", "\t": ","}.get(sep)
    if other is None or sep in first_line or other not in first_line:
        return
    looks, use = (
        ("tab-separated", ".tsv or sep='\\t'") if other == "\t" else ("comma-separated", ".csv or sep=','")
    )
    raise DataError(
        f"looks {looks}: the first line has {first_line.count(other) + 1} fields split by {other!r} and no {sep!r}",
        source=name,
        expected=f"{sep!r}-separated fields; use {use}",
    )


def _reject_ragged(
    bad: list[int],
    first: list[str],
    sample: list[list[str]],
    columns: list[str],
    name: str,
    sep: str,
    quoting: str,
) -> None:
    """``bad``: 0-based data records whose field count is not the header's; ``first``: the first of them."""
    if not bad:
        return
    if len(first) > len(columns):
        hint = f"a field that contains {sep!r} must be quoted"
        if quoting == "minimal" and any('"' in field for field in first):
            hint += "; if quote characters are part of the text, pass quoting='none'"
        if sep == "," and any("\t" in field for record in sample for field in record):
            hint += "; the file contains tabs: if it is tab-separated, use .tsv or sep='\\t'"
    else:
        hint = "every row to have a value for every column (an empty value is written as an empty field)"
    rows = ", ".join(str(i + 1) for i in bad[:_MAX_LISTED_ROWS]) + (
        ", ..." if len(bad) > _MAX_LISTED_ROWS else ""
    )
    raise DataError(
        f"has {len(first)} fields but the header has {len(columns)} ({', '.join(columns)})"
        + (f" ({len(bad)} rows like this: {rows})" if len(bad) > 1 else ""),
        source=name,
        row=bad[0] + 1,
        expected=hint,
    )


def _read_csv(lines: Iterable[str], first_line: str, name: str, options: dict):
    return _read_delimited(lines, first_line, name, options, ",")


def _read_tsv(lines: Iterable[str], first_line: str, name: str, options: dict):
    return _read_delimited(lines, first_line, name, options, "\t")


def _read_stsb(lines: Iterable[str], first_line: str, name: str, options: dict):
    layout = {**options, "sep": "\t", "header": False, "quoting": "none"}
    table, _ = _read_delimited(lines, first_line, name, layout, "\t")
    if table.num_columns < len(STSB_COLUMNS):
        raise DataError(
            f"has {table.num_columns} tab-separated fields, fewer than the STS Benchmark layout's {len(STSB_COLUMNS)}",
            source=name,
            expected=f"fields {', '.join(STSB_COLUMNS)}",
        )
    return table.rename_columns([*STSB_COLUMNS, *table.column_names[len(STSB_COLUMNS) :]]), None


def is_stsb_release_file(path: str | os.PathLike) -> bool:
    """True for a file laid out like the STS-B release: a .csv/.tsv/.txt, tab-separated, no header, >= 7 fields,
    a number (the score) in field 5 of the first line."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() not in (".csv", ".tsv", ".txt"):
        return False
    with path.open(encoding="utf-8", errors="replace") as handle:
        first = handle.readline().rstrip("\r\n").split("\t")
    if len(first) < len(STSB_COLUMNS):
        return False
    try:
        float(first[4])
    except ValueError:
        return False
    return True


def _read_txt(lines: Iterable[str], first_line: str, name: str, options: dict) -> tuple[pa.Table, Sequence[int] | None]:
    """One sentence per line; ``header=true`` skips line 1 (then rows are lines 2, 3, ...)."""
    header = as_header(options.get("header", False))
    if not header:
        _warn_if_header_like(first_line, name)
    batches: list[pa.Array] = []
    pending: list[str] = []
    for line in lines:
        pending.append(line.removesuffix("\n").removesuffix("\r"))
        if len(pending) == _BATCH_ROWS:
            batches.append(pa.array(pending, type=pa.string()))
            pending = []
    batches.append(pa.array(pending, type=pa.string()))
    text = pa.chunked_array(batches, type=pa.string())
    if header:
        return pa.table({"text": text.slice(1)}), range(2, len(text) + 1)
    return pa.table({"text": text}), None


def _warn_if_header_like(first_line: str, name: str) -> None:
    """Log when line 1 of a .txt read as sentences looks like a column name or a delimited header."""
    word = first_line.strip().lower()
    if word in _HEADER_WORDS:
        logger.warning(
            "%s: line 1 is %r, which looks like a column name; it is read as a sentence. If it is a header, "
            "pass header=true (recipe header: true, CLI --header true) to skip it",
            name,
            first_line.strip(),
        )
    elif "\t" in first_line:
        logger.warning(
            "%s: line 1 has tab-separated fields but a .txt is read as one sentence per line; if the file is "
            "tab-separated, pass sep='\\t' (recipe sep: tab, CLI --sep tab) or format='tsv'",
            name,
        )


def _read_jsonl(raw: bytes, name: str, options: dict) -> tuple[pa.Table, list[int]]:
    text = _decode(raw, name, options)
    records, line_numbers = [], []
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if line.lstrip()[:1] != "{" and not records:
            raise _content_mismatch(raw, name, "jsonl")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                f"malformed JSON: {error.msg} at character {error.colno}",
                source=name,
                row=line_number,
                expected="one JSON object per line",
            ) from error
        if not isinstance(record, dict):
            raise DataError(
                f"holds a JSON {type(record).__name__}, not an object",
                source=name,
                row=line_number,
                expected='one JSON object per line, e.g. {"text": "..."}',
            )
        records.append(record)
        line_numbers.append(line_number)
    return _records_table(records, name, line_numbers), line_numbers


def _records_table(records: list[dict], name: str, row_numbers: list[int] | None) -> pa.Table:
    keys = list(dict.fromkeys(key for record in records for key in record))
    return _typed_table({key: [record.get(key) for record in records] for key in keys}, name, row_numbers)


def _read_json(raw: bytes, name: str, options: dict):
    text = _decode(raw, name, options).lstrip()
    if text[:1] not in ("{", "["):
        raise _content_mismatch(raw, name, "json")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data" and text[:1] == "{":
            return _read_jsonl(raw, name, options)  # JSON lines saved as .json, as many exporters do
        raise DataError(
            f"malformed JSON at line {error.lineno}, character {error.colno}: {error.msg}", source=name
        ) from error
    field = options.get("field")
    if field is not None:
        if not isinstance(data, dict) or field not in data:
            keys = ", ".join(data) if isinstance(data, dict) else "(the top level is a list)"
            raise DataError(f"has no key '{field}' at the top level (keys: {keys})", source=name)
        data = data[field]
    expected = "a list of objects, an object of equal-length lists, or an object with one list of objects"
    if isinstance(data, dict):
        lists = {key: value for key, value in data.items() if isinstance(value, list)}
        if len(lists) == len(data) and len({len(value) for value in lists.values()}) == 1:
            return _typed_table(lists, name, None), None
        if len(lists) == 1 and all(isinstance(item, dict) for item in next(iter(lists.values()))):
            data = next(iter(lists.values()))
        else:
            raise DataError(f"holds an object with keys {', '.join(data)}", source=name, expected=expected)
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        bad = (
            next((i for i, item in enumerate(data) if not isinstance(item, dict)), None)
            if isinstance(data, list)
            else None
        )
        where = f" (item {bad + 1} is a {type(data[bad]).__name__})" if bad is not None else ""
        raise DataError(f"holds a JSON {type(data).__name__}{where}", source=name, expected=expected)
    if not data:
        raise DataError("holds no records", source=name)
    return _records_table(data, name, None), None


def _read_parquet(raw: bytes, name: str, options: dict) -> tuple[pa.Table, None]:
    import pyarrow.parquet as pq

    if not (raw[:4] == b"PAR1" and raw[-4:] == b"PAR1"):
        raise _content_mismatch(raw, name, "parquet")
    try:
        return pq.read_table(pa.BufferReader(raw)), None
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"is a damaged parquet file: {error}", source=name) from error


def _read_xlsx(raw: bytes, name: str, options: dict) -> tuple[pa.Table, None]:
    import pandas as pd

    if raw[:4] != b"PK\x03\x04":
        old = raw.startswith(b"\xd0\xcf\x11\xe0")
        if old:
            raise DataError(
                "is an old Excel .xls file", source=name, expected="an .xlsx or .csv file: save it as one"
            )
        raise _content_mismatch(raw, name, "xlsx")
    try:
        workbook = pd.ExcelFile(io.BytesIO(raw), engine="openpyxl")
    except Exception as error:  # noqa: BLE001 - openpyxl raises many types for a damaged workbook
        raise DataError(f"is not a readable .xlsx workbook: {error}", source=name) from error
    sheet = options.get("sheet", 0)
    sheets = workbook.sheet_names
    if isinstance(sheet, str) and sheet.isdigit() and sheet not in sheets:
        sheet = int(sheet)
    if (isinstance(sheet, int) and not 0 <= sheet < len(sheets)) or (
        isinstance(sheet, str) and sheet not in sheets
    ):
        raise DataError(f"has no sheet {sheet!r}", source=name, expected=f"sheet= one of {', '.join(sheets)}")
    header = as_header(options.get("header", True))
    frame = workbook.parse(sheet, dtype=str, keep_default_na=False, header=0 if header else None)
    columns = [str(column) for column in frame.columns]
    if frame.empty:
        if columns:
            raise DataError(f"has a header ({', '.join(columns)}) but no data rows", source=name)
        raise DataError("the sheet is empty", source=name)
    return _string_table(columns, list(frame.itertuples(index=False, name=None))), None


def _read_pkl(raw: bytes, name: str, options: dict) -> tuple[pa.Table, None]:
    """A pickled list of sentences (-> ``text``), a pair of aligned lists (-> ``anchor``, ``positive``),
    a dict of equal-length lists, or a pandas DataFrame. Unpickling runs code: read only trusted files."""
    import pandas as pd

    try:
        data = pickle.loads(raw)
    except Exception as error:  # noqa: BLE001 - unpickling raises anything the stream encodes
        raise DataError(
            f"is not a readable pickle ({type(error).__name__}: {error}); it looks like {_sniff(raw)}",
            source=name,
        ) from error
    expected = "a list of sentences, a pair of aligned lists (anchor, positive), a dict of equal-length lists, or a pandas DataFrame"
    if isinstance(data, pd.DataFrame):
        columns = {str(column): data[column].tolist() for column in data.columns}
        return _typed_table(columns, name, None), None
    if isinstance(data, list) and data and all(isinstance(item, str) for item in data):
        return _typed_table({"text": data}, name, None), None
    if (
        isinstance(data, (list, tuple))
        and len(data) == 2
        and all(isinstance(item, (list, tuple)) for item in data)
    ):
        anchors, positives = data
        if len(anchors) != len(positives):
            raise DataError(
                f"holds two lists of different lengths ({len(anchors)} and {len(positives)})",
                source=name,
                expected="two aligned lists: positives[i] pairs with anchors[i]",
            )
        return _typed_table({"anchor": list(anchors), "positive": list(positives)}, name, None), None
    if isinstance(data, dict) and data and all(isinstance(value, (list, tuple)) for value in data.values()):
        if len({len(value) for value in data.values()}) == 1:
            return _typed_table({str(key): list(value) for key, value in data.items()}, name, None), None
    raise DataError(f"holds {_describe_object(data)}", source=name, expected=expected)


def _describe_object(data) -> str:
    kind = type(data).__name__
    if isinstance(data, (list, tuple, dict)):
        if not data:
            return f"an empty {kind}"
        items = list(data.values()) if isinstance(data, dict) else list(data)
        item_kinds = sorted({type(item).__name__ for item in items})
        return f"a {kind} of {len(items)} items of type {', '.join(item_kinds)}"
    return f"a {kind}"


_READERS = {  # whole-content readers: (bytes, name, options) -> (table, row numbers or None)
    "json": _read_json,
    "jsonl": _read_jsonl,
    "parquet": _read_parquet,
    "xlsx": _read_xlsx,
    "pkl": _read_pkl,
}
_STREAM_READERS = {  # line readers: (lines, first line, name, options) -> (table, row numbers or None), newline mode
    "csv": (_read_csv, ""),
    "tsv": (_read_tsv, ""),
    "stsb": (_read_stsb, ""),
    "txt": (_read_txt, "\n"),
}
