"""Load and validate a customer table from CSV (plain or compressed) or Parquet.

Reading goes through pyarrow and only the columns the run needs are converted to floats.
Every problem a user can fix becomes one `InputError` line naming the file, the column,
the line or value, and what to do.
"""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import difflib
import gzip
import hashlib
import io
import lzma
import re
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import pandas as pd

from custseg import storage
from custseg.errors import InputError
from custseg.options import DEFAULT_FEATURES
from custseg.sanitize import logger

log = logger(__name__)

MISSING_TOKENS: tuple[str, ...] = (
    "", "?", "NA", "N/A", "na", "n/a", "NaN", "nan", "null", "NULL", "None", "none", "-",
)  # fmt: skip
DELIMITERS: tuple[str, ...] = (",", ";", "\t", "|")
ID_NAMES: tuple[str, ...] = ("customerid", "customer", "custid", "clientid", "id")
_ALIASES = {"gender": "genre"}  # Mall Customers files use either name for the same column
HUGE = 1e100
"""Feature values this large (or infinite) are dropped: squaring them in K-Means overflows."""
_HEAD_BYTES = 1 << 16
MAX_HEADER_BYTES = 1 << 20
"""A header line longer than 1 MiB (tens of thousands of columns) is refused with that reason."""
MAX_DECOMPRESSED_BYTES = 8 << 30
"""Compressed input is refused once its decompressed bytes pass this (8 GiB; override with
`CUSTSEG_MAX_DECOMPRESSED_BYTES`), counted as they stream: a zip bomb cannot fill memory."""
_MAX_REPORTED = 5

_MAGIC = {
    b"PAR1": "parquet",
    b"\x1f\x8b": "gzip",
    b"PK\x03\x04": "zip",
    b"BZh": "bz2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}


@dataclass(frozen=True)
class CustomerTable:
    """A loaded customer table with its features resolved to real column names.

    `frame` holds the id column (if any) and the features as float64 (missing, non-numeric
    and infinite cells are NaN); `invalid` lists, per reason, the row positions whose
    feature cells were not numbers; `line_of` turns a row position into a line the user
    can find in the file. A categorical feature holds the code of its value in
    `categories[feature]` (-1 for a value outside a model's categories, listed in `unseen`).
    """

    frame: pd.DataFrame
    features: tuple[str, ...]
    id_column: str | None
    source: str
    file_format: str
    n_rows_read: int
    sha256: str
    invalid: dict[str, np.ndarray] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    header_line: int = 1
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    unseen: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def line_word(self) -> str:
        """What `line_of` counts: `line` of a CSV file, `row` of a Parquet file."""
        return "row" if self.file_format == "parquet" else "line"

    delimiter: str = ","

    def line_of(self, row: int) -> int:
        """1-based line of the file on which data row `row` starts; Parquet rows count from 1.

        Quoted fields may span lines, so a CSV's rows are mapped to lines by reading the file
        up to that row (on the error and warning paths only, and only the prefix needed)."""
        if self.file_format == "parquet":
            return row + 1
        return line_map(self.source, self.file_format, self.delimiter, self.header_line)(row)


class _LineMap:
    """Starting lines of a CSV's data rows, parsed lazily as far as asked (csv module: quoted
    fields may hold line breaks; blank lines hold no row, as for pyarrow)."""

    def __init__(self, uri: str, kind: str, delimiter: str, header_line: int) -> None:
        self.uri, self.kind, self.delimiter, self.header_line = uri, kind, delimiter, header_line
        self.starts: list[int] = []
        self._rows: Any = None

    def _reader(self) -> Any:
        import csv

        raw = _open_text_stream(self.uri, self.kind)
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
        for _ in range(self.header_line):
            text.readline()
        reader = csv.reader(text, delimiter=self.delimiter)
        before = 0
        for record in reader:
            if record:
                yield self.header_line + before + 1
            before = reader.line_num

    def __call__(self, row: int) -> int:
        if self._rows is None:
            self._rows = self._reader()
        while len(self.starts) <= row:
            start = next(self._rows, None)
            if start is None:  # the file changed since it was read: the simple count
                return row + self.header_line + 1
            self.starts.append(start)
        return self.starts[row]


_LINE_MAPS: dict[tuple[str, str, str, int], _LineMap] = {}


def line_map(uri: str, file_format: str, delimiter: str, header_line: int) -> _LineMap:
    """The (cached) row -> line map of a CSV file."""
    kind = file_format.removeprefix("csv+") if file_format.startswith("csv+") else "csv"
    key = (uri, kind, delimiter, header_line)
    if key not in _LINE_MAPS:
        _LINE_MAPS.clear()  # one file at a time: the map of the file being reported on
        _LINE_MAPS[key] = _LineMap(uri, kind, delimiter, header_line)
    return _LINE_MAPS[key]


def normalize_name(name: str) -> str:
    """Lower-case a column name and drop everything that is not a letter or a digit."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def name_keys(name: str) -> set[str]:
    """Names a column answers to: with and without its bracketed unit, with aliases."""
    full = normalize_name(name)
    bare = normalize_name(re.sub(r"\(.*?\)|\[.*?\]", "", str(name)))
    keys = {k for k in (full, bare) if k}
    keys |= {_ALIASES[k] for k in keys if k in _ALIASES}
    return keys


def resolve_column(
    wanted: str, columns: list[str], *, source: str, needed_by: str | None = None
) -> str:
    """The one column of `columns` that `wanted` names, or an `InputError` with suggestions.

    `needed_by` names the saved model that needs the column (scoring a test file), so the
    message says to add the column rather than to choose other features.
    """
    if wanted in columns:
        return wanted
    keys = name_keys(wanted)
    hits = [c for c in columns if name_keys(c) & keys]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise InputError(
            f"{source}: feature {wanted!r} matches several columns {hits}; name one exactly"
        )
    # an id column is never a feature: suggest the other columns
    idc = find_id_column(columns)
    by_norm = {normalize_name(c): c for c in columns if c != idc}
    close = difflib.get_close_matches(normalize_name(wanted), list(by_norm), n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(repr(by_norm[c]) for c in close)}" if close else ""
    if needed_by:
        raise InputError(
            f"{source}: column {wanted!r} not found, but {needed_by} needs it as a feature "
            f"(columns: {columns_excerpt(columns)}){hint}; add or rename the column"
        )
    raise InputError(
        f"{source}: required column {wanted!r} not found (columns: {columns_excerpt(columns)})"
        f"{hint}; rename the column or pass --features"
    )


def columns_excerpt(columns: list[str], *, most: int = 12, width: int = 32) -> str:
    """A short list of column names for a message: at most `most` names of at most `width`
    characters each, so an error never quotes much of a file's content."""
    names = [c if len(c) <= width else c[: width - 1] + "…" for c in columns[:most]]
    more = f" and {len(columns) - most} more" if len(columns) > most else ""
    return "[" + ", ".join(repr(n) for n in names) + "]" + more


def find_id_column(columns: list[str]) -> str | None:
    """The customer-id column, if the table has one (`CustomerID`, `customer_id`, `id`, ...)."""
    by_norm = {normalize_name(c): c for c in columns}
    for name in ID_NAMES:
        if name in by_norm:
            return by_norm[name]
    return None


def file_sha256(uri: str) -> str:
    """SHA-256 of the file's bytes, streamed."""
    digest = hashlib.sha256()
    with storage.open_file(uri, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_path(uri: str) -> None:
    if storage.is_remote(uri):
        if not storage.exists(uri):
            raise InputError(f"{uri}: file not found; check the path or URI")
        return
    path = storage.local_path(uri)
    if not path.exists():
        raise InputError(f"{uri}: file not found; check the path (cwd-relative) or pass --input")
    if path.is_dir():
        raise InputError(f"{uri}: is a directory, not a file; point at the CSV or Parquet file")
    if path.stat().st_size == 0:
        raise InputError(f"{uri}: file is empty (0 bytes); export the customer table again")


def sniff_format(uri: str) -> str:
    """`parquet`, a compression (`gzip`, `zip`, `bz2`, `xz`, `zstd`) or `csv`, by magic bytes."""
    with storage.open_file(uri, "rb") as fh:
        head = fh.read(8)
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    return "csv"


def _open_text_stream(uri: str, kind: str) -> IO[bytes]:
    """A binary stream of the decompressed CSV bytes."""
    raw = storage.open_file(uri, "rb")
    if kind == "csv":
        return raw
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw)
    if kind == "bz2":
        return bz2.BZ2File(raw)
    if kind == "xz":
        return lzma.LZMAFile(raw)
    if kind == "zip":
        archive = zipfile.ZipFile(raw)
        members = [m for m in archive.namelist() if not m.endswith("/")]
        if "xl/workbook.xml" in members:
            raise InputError(
                f"{uri}: is an Excel workbook (.xlsx), not a CSV; save the sheet as 'CSV UTF-8'"
            )
        if len(members) != 1:
            raise InputError(
                f"{uri}: zip archive holds {len(members)} files {members[:5]}; "
                "it must hold exactly one CSV"
            )
        return archive.open(members[0])
    if kind == "zstd":
        import pyarrow as pa

        return pa.input_stream(str(storage.local_path(uri)), compression="zstd")
    raise InputError(f"{uri}: unsupported compression {kind!r}")


def _max_decompressed() -> int:
    import os

    return int(os.environ.get("CUSTSEG_MAX_DECOMPRESSED_BYTES") or MAX_DECOMPRESSED_BYTES)


def _read_capped(uri: str, stream: IO[bytes], kind: str) -> bytes:
    """All of a decompressed stream, refused with one line once it passes the cap."""
    limit, parts, total = _max_decompressed(), [], 0
    while chunk := stream.read(1 << 24):
        total += len(chunk)
        if total > limit:
            raise InputError(
                f"{uri}: decompresses to more than {limit:,} bytes ({kind}); decompress it "
                "yourself and pass the CSV, or raise CUSTSEG_MAX_DECOMPRESSED_BYTES"
            )
        parts.append(chunk)
    return b"".join(parts)


@contextlib.contextmanager
def _damaged_archives_refused(uri: str, kind: str) -> Iterator[None]:
    """Turn a decompression error into one `InputError` line (plain CSV errors pass)."""
    try:
        yield
    except (OSError, EOFError, zipfile.BadZipFile, lzma.LZMAError) as exc:
        if kind == "csv":
            raise
        raise InputError(
            f"{uri}: {kind} file is damaged or truncated ({exc}); compress or export it again"
        ) from None
    except Exception as exc:  # pyarrow's zstd stream raises ArrowInvalid / OSError
        if kind != "zstd":
            raise
        raise InputError(f"{uri}: zstd file is damaged or truncated ({exc})") from None


def read_text_bytes(uri: str, kind: str) -> bytes:
    """The whole decompressed CSV, without a UTF-8 BOM; a damaged archive is an `InputError`."""
    with _damaged_archives_refused(uri, kind), _open_text_stream(uri, kind) as stream:
        data = stream.read() if kind == "csv" else _read_capped(uri, stream, kind)
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data


def _as_bytes(uri: str, kind: str, data: bytes | str) -> bytes:
    """The CSV's bytes for an error message (only read when parsing already failed)."""
    return data if isinstance(data, bytes) else read_text_bytes(uri, kind)


def _line_at(data: bytes, pos: int) -> int:
    """1-based line number (the header is line 1) of byte offset `pos`."""
    return data.count(b"\n", 0, pos) + 1


def _decode_head(uri: str, head: bytes) -> str:
    """The first lines as text. The header must be UTF-8; bad bytes further down are only an
    error when they sit in a column the run reads (pyarrow reports those, see `_arrow_error`)."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(
            f"{uri}: text is UTF-16 (Excel 'Unicode Text'), not UTF-8; "
            "save it as 'CSV UTF-8' instead"
        )
    if head.startswith((b"\xd0\xcf\x11\xe0", b"\x89PNG", b"%PDF", b"\x7fELF")) or b"\x00" in head:
        raise InputError(
            f"{uri}: looks binary (NUL bytes or a binary signature), not a CSV text file; "
            "export it as CSV (UTF-8) or Parquet"
        )
    if len(head) >= _HEAD_BYTES and b"\n" in head:  # a prefix: keep whole lines only
        head = head[: head.rindex(b"\n") + 1]
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = _line_at(head, exc.start)
        if line == 1:
            bad = head[exc.start : exc.start + 1].hex()
            raise InputError(
                f"{uri}: header line is not UTF-8 text (byte 0x{bad}); "
                "re-save the file as UTF-8 (Excel: 'CSV UTF-8')"
            ) from None
        return head.decode("utf-8", errors="replace")


def _split_header(uri: str, text: str) -> tuple[list[str], str, int]:
    """The header's column names, the delimiter (`,`, `;`, tab or `|`) and the header's line.

    Blank lines before the header are skipped, and so is Excel's `sep=;` line, which names
    the delimiter. Otherwise the delimiter is the candidate that splits the header into the
    most fields and the next lines into as many; ties go to the comma.
    """
    import csv

    raw = [ln.rstrip("\r") for ln in text.split("\n")]
    at = [i for i, ln in enumerate(raw) if ln.strip()]
    if not at:
        raise InputError(f"{uri}: file has no header line (only blank lines)")
    forced = re.fullmatch(r'"?sep=(.)"?', raw[at[0]].strip(" "))
    if forced:
        at = at[1:]
        if not at:
            raise InputError(f"{uri}: only a 'sep=' line, no header; export the table again")
    lines = [raw[i] for i in at]
    sample = lines[:20] if len(lines) > 1 else lines
    best, best_score = ",", (-1, -1)
    for delim in (forced.group(1),) if forced else DELIMITERS:
        try:  # a stream, not a list of lines, so quoted fields may hold line breaks
            counts = [
                len(row) for row in csv.reader(io.StringIO("\n".join(sample)), delimiter=delim)
            ]
        except csv.Error:
            continue
        if not counts or counts[0] < 2:
            continue
        consistent = sum(c == counts[0] for c in counts[1:])
        score = (consistent, counts[0])
        if score > best_score:
            best, best_score = delim, score
    try:
        header = next(csv.reader(io.StringIO(lines[0]), delimiter=best), [])
    except csv.Error as exc:
        raise InputError(f"{uri}: cannot read the header line ({exc}); check its quoting") from None
    header = [h.strip() for h in header]
    return header, best, at[0] + 1


def _check_distinct(uri: str, features: Any, resolved: list[str]) -> None:
    if len(set(resolved)) != len(resolved):
        raise InputError(
            f"{uri}: features {list(features)} name the same column twice ({resolved}); "
            "list each column once"
        )


def _check_header(uri: str, header: list[str]) -> None:
    seen: dict[str, int] = {}
    for pos, name in enumerate(header, start=1):
        if name in seen:
            raise InputError(
                f"{uri}: duplicate column name {name!r} (columns {seen[name]} and {pos}); "
                "rename one of them"
            )
        seen[name] = pos


def _read_csv_arrow(
    data: bytes | str,
    delimiter: str,
    header: list[str],
    wanted: list[str],
    as_text: set[str],
    header_line: int = 1,
) -> Any:
    """Parse the wanted columns of the CSV in `data` (bytes, or a local file path that pyarrow
    streams natively and parses in parallel blocks without holding the file in memory)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    types = {c: (pa.string() if c in as_text else pa.float64()) for c in wanted}
    convert = pacsv.ConvertOptions(
        include_columns=wanted,
        column_types=types,
        null_values=list(MISSING_TOKENS),
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    read = pacsv.ReadOptions(column_names=header, skip_rows=header_line, block_size=1 << 24)
    parse = pacsv.ParseOptions(delimiter=delimiter)
    if isinstance(data, str):
        # skip_rows skips the lines up to the header we already parsed (and a UTF-8 BOM)
        with pa.input_stream(data) as source:
            return pacsv.read_csv(source, read, parse, convert)
    return pacsv.read_csv(pa.BufferReader(data), read, parse, convert)


def _id_series(values: Any) -> pd.Series:
    """Customer ids as an Arrow-backed string column (no per-row Python objects)."""
    import pyarrow as pa

    if isinstance(values, pd.Series):
        values = pa.array(values, from_pandas=True)
    # chunks (one per parsed CSV block or Parquet row group) stay as they are: no copy
    if not pa.types.is_string(values.type):
        values = values.cast(pa.string())
    return pd.Series(pd.arrays.ArrowExtensionArray(values))


def _arrow_frame(table: Any, id_column: str | None) -> pd.DataFrame:
    """An Arrow table as a DataFrame: the id as Arrow strings, float columns as NumPy floats."""
    import pyarrow as pa

    columns: dict[str, Any] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        if name == id_column:
            columns[name] = _id_series(column)
        elif pa.types.is_floating(column.type):
            columns[name] = column.to_numpy()  # nulls become NaN
        else:
            columns[name] = column.to_pandas()
    return pd.DataFrame(columns, index=pd.RangeIndex(table.num_rows), copy=False)


def read_head(uri: str, kind: str) -> bytes:
    """The first lines of a CSV (decompressed, without a UTF-8 BOM): at least `_HEAD_BYTES`,
    and the whole header line however long, up to `MAX_HEADER_BYTES`; a longer header line
    is an `InputError` saying so. Only this much is decompressed, so a file that is not a
    table is refused before the rest is read or hashed."""
    with _damaged_archives_refused(uri, kind), _open_text_stream(uri, kind) as stream:
        head = stream.read(_HEAD_BYTES + 3)
        if head.startswith(b"\xef\xbb\xbf"):
            head = head[3:]
        while b"\n" not in head.lstrip(b"\r\n") and len(head) <= MAX_HEADER_BYTES:
            more = stream.read(_HEAD_BYTES)
            if not more:
                return head
            head += more
    if b"\n" not in head.lstrip(b"\r\n") and len(head) > MAX_HEADER_BYTES:
        _decode_head(uri, head[:_HEAD_BYTES])  # a binary file says so first
        raise InputError(
            f"{uri}: line 1 (the header) is longer than {MAX_HEADER_BYTES:,} bytes; a customer "
            "table's header names its columns: export only the columns you need"
        )
    return head


def _arrow_error(uri: str, exc: Exception, data: bytes, header: list[str]) -> InputError:
    """One line for a pyarrow CSV error, with the line number found in `data` (error path only)."""
    msg = str(exc).strip().splitlines()[0]
    if "UTF8" in msg:
        where = ""
        col = re.search(r"column #(\d+)", msg)
        if col and int(col.group(1)) < len(header):
            where = f" in column {header[int(col.group(1))]!r}"
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as err:
            bad = data[err.start : err.start + 1].hex()
            where += f" (first undecodable byte 0x{bad} on line {_line_at(data, err.start)})"
        return InputError(
            f"{uri}: text is not UTF-8{where}; re-save the file as UTF-8 (Excel: 'CSV UTF-8')"
        )
    ragged = re.search(r"Expected (\d+) columns, got (\d+): (.*)$", msg)
    if ragged:
        expected, got, text = ragged.groups()
        row = text.encode()
        pos = data.find(b"\n" + row)
        line = f"line {_line_at(data, pos + 1)}" if pos >= 0 else "a row"
        return InputError(
            f"{uri}: {line} has {got} field(s) but the header has {expected} ({text[:60]!r}); "
            "fix that row's quoting or delimiters, or remove it"
        )
    return InputError(f"{uri}: cannot parse as CSV ({msg}); check the delimiter and quoting")


def _coerce_numeric(
    uri: str, column: str, text: pd.Series, line_of: Any, word: str = "line"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Floats of a text column, the rows that held non-numbers, and warnings naming them."""
    stripped = text.astype("string").str.strip()
    values = pd.to_numeric(stripped, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    present = stripped.notna().to_numpy()
    bad = np.flatnonzero(present & np.isnan(values))
    n_present = int(present.sum())
    warnings: list[str] = []
    if bad.size:
        examples = ", ".join(f"{word} {line_of(int(r))}: {stripped.iloc[r]!r}" for r in bad[:3])
        if bad.size * 2 > n_present:
            raise InputError(
                f"{uri}: column {column!r} is not numeric ({bad.size} of {n_present} values are "
                f"text, e.g. {examples}); choose numeric features with --features"
            )
        warnings.append(
            f"{uri}: column {column!r} has {bad.size} non-numeric value(s) ({examples}"
            f"{', ...' if bad.size > 3 else ''}); those rows are dropped"
        )
    return values, bad, warnings


def load_customers(
    source: str,
    *,
    features: tuple[str, ...] | list[str] = DEFAULT_FEATURES,
    id_column: str | None = None,
    needed_by: str | None = None,
    categorical: tuple[str, ...] | list[str] = (),
    categories: dict[str, tuple[str, ...]] | None = None,
) -> CustomerTable:
    """Read the id column and the feature columns of a CSV or Parquet customer table.

    Raises `InputError` for anything the user must fix; rows with missing, non-numeric or
    infinite features are kept as NaN and reported, so preprocessing can drop and count them.
    `needed_by` names the model a test file is scored with, for the missing-column message.
    A feature is categorical when named in `categorical`, or when it holds text with at most
    `MAX_CATEGORIES` distinct values; `categories` (a model's) fixes their values instead.
    """
    uri = str(source)
    _check_path(uri)
    kind = sniff_format(uri)
    if kind != "parquet":  # a file that is no table is refused before it is hashed
        _decode_head(uri, read_head(uri, kind))
    with ThreadPoolExecutor(max_workers=1) as hasher:
        # hashing runs beside the parse (hashlib releases the GIL): no extra pass at the end
        digest = hasher.submit(file_sha256, uri)
        table = _load(uri, features, id_column, needed_by, categorical, categories)
        sha = digest.result()
    return dataclasses.replace(table, sha256=sha)


def _load(
    uri: str,
    features: tuple[str, ...] | list[str],
    id_column: str | None,
    needed_by: str | None,
    categorical: tuple[str, ...] | list[str] = (),
    categories: dict[str, tuple[str, ...]] | None = None,
) -> CustomerTable:
    kind = sniff_format(uri)
    header_line = 1
    kinds: _Categories | None = None
    if kind == "parquet":
        table, feats, idc = _read_parquet(uri, features, id_column, needed_by)
        file_format = "parquet"
    else:
        file_format = "csv" if kind == "csv" else f"csv+{kind}"
        streamed = kind == "csv" and not storage.is_remote(uri)
        head = read_head(uri, kind)
        if not head.strip():
            raise InputError(f"{uri}: file is empty (no header, no rows); export the table again")
        text = _decode_head(uri, head)
        # a plain local CSV is parsed straight from the file; other inputs are decompressed
        data: bytes | str = str(storage.local_path(uri)) if streamed else read_text_bytes(uri, kind)
        header, delimiter, header_line = _split_header(uri, text)
        _check_header(uri, header)
        if delimiter != ",":
            log.info("%s: detected delimiter %r", uri, delimiter)
        if len(header) == 1 and not all(name_keys(f) & name_keys(header[0]) for f in features):
            raise InputError(
                f"{uri}: the header line has no , ; tab or | delimiter (one column), so this is "
                "not a table custseg can read; export it with one of those delimiters"
            )
        feats = [resolve_column(f, header, source=uri, needed_by=needed_by) for f in features]
        _check_distinct(uri, features, feats)
        idc = resolve_column(id_column, header, source=uri) if id_column else find_id_column(header)
        wanted = ([idc] if idc else []) + [f for f in feats if f != idc]
        kinds = _category_plan(uri, features, feats, categorical, categories)
        as_text = ({idc} if idc else set()) | kinds.named | set(kinds.given)
        import pyarrow as pa

        try:
            table = _read_csv_arrow(data, delimiter, header, wanted, as_text, header_line)
        except pa.ArrowInvalid as exc:
            if "conversion error" not in str(exc).lower() or "UTF8" in str(exc):
                raise _arrow_error(uri, exc, _as_bytes(uri, kind, data), header) from None
            try:
                table = _read_csv_arrow(data, delimiter, header, wanted, set(wanted), header_line)
            except pa.ArrowInvalid as exc2:
                raise _arrow_error(uri, exc2, _as_bytes(uri, kind, data), header) from None
        del data
    n_rows = table.num_rows
    if n_rows == 0:
        raise InputError(f"{uri}: header only, no data rows; the table has no customers")

    def line_of(row: int) -> int:
        if file_format == "parquet":
            return row + 1
        return line_map(uri, file_format, delimiter, header_line)(row)

    word = "row" if file_format == "parquet" else "line"
    if kinds is None:  # Parquet: the columns are resolved only once the file is open
        kinds = _category_plan(uri, features, feats, categorical, categories)
    frame, invalid, warnings = _feature_frame(uri, table, feats, idc, line_of, word, kinds)
    del table
    for w in warnings:
        log.warning("%s", w)
    log.info("read %d rows from %s (%s); features %s", n_rows, uri, file_format, feats)
    return CustomerTable(
        frame=frame,
        features=tuple(feats),
        id_column=idc or None,
        source=uri,
        file_format=file_format,
        n_rows_read=n_rows,
        sha256="",  # filled in by load_customers, hashed beside the parse
        invalid=invalid,
        warnings=tuple(warnings),
        header_line=header_line,
        delimiter=delimiter if file_format != "parquet" else ",",
        categories=kinds.found,
        unseen=kinds.unseen,
    )


def file_header(uri: str) -> list[str]:
    """The column names of a customer file, in file order."""
    import pyarrow.parquet as pq

    kind = sniff_format(uri)
    if kind == "parquet":
        with _parquet_source(uri) as src:
            return list(pq.ParquetFile(src).schema_arrow.names)
    return _split_header(uri, _decode_head(uri, read_head(uri, kind)))[0]


def other_columns(uri: str, known: set[str]) -> Any:
    """The columns of a customer file that are not in `known`, as text, one row per data
    row: an Arrow table (None when there are none), so that callers can pick rows before
    paying for pandas objects."""
    import pyarrow.parquet as pq

    kind = sniff_format(uri)
    if kind == "parquet":
        with _parquet_source(uri) as src:
            pf = pq.ParquetFile(src)
            others = [c for c in pf.schema_arrow.names if c not in known]
            return pf.read(columns=others) if others else None
    header, delimiter, header_line = _split_header(uri, _decode_head(uri, read_head(uri, kind)))
    others = [c for c in header if c not in known]
    if not others:
        return None
    local = kind == "csv" and not storage.is_remote(uri)
    data = str(storage.local_path(uri)) if local else read_text_bytes(uri, kind)
    return _read_csv_arrow(data, delimiter, header, others, set(others), header_line)


def input_columns(table: CustomerTable) -> tuple[list[str], pd.DataFrame]:
    """Every column of the table's file in file order, and those that are neither its id
    nor a feature, read as text row for row (so that outputs can keep the input's columns);
    if they cannot be read row for row, only the id and features are kept."""
    import pyarrow as pa

    # categorical features are read again as text: their values as written, unseen ones too
    known = {table.id_column, *(f for f in table.features if f not in table.categories)}
    header = file_header(table.source)
    try:
        others = other_columns(table.source, known)
    except pa.ArrowInvalid as exc:
        log.warning("%s: its other columns are not kept (%s)", table.source, exc)
        others = None
    if others is None or others.num_rows != len(table.frame):
        return [c for c in header if c in known], pd.DataFrame(index=table.frame.index)
    return header, others.to_pandas().set_axis(table.frame.index)


def input_frame(table: CustomerTable) -> pd.DataFrame:
    """The input's columns in file order (features as read, other columns as text)."""
    header, others = input_columns(table)
    columns = {}
    for name in header:
        from_frame = name in table.frame and name not in table.categories
        columns[name] = table.frame[name] if from_frame else others[name]
    if not table.id_column:
        columns = {"row": np.arange(1, len(table.frame) + 1), **columns}
    return pd.DataFrame(columns, index=table.frame.index)


def category_values(codes: np.ndarray, cats: tuple[str, ...], *, other: Any) -> np.ndarray:
    """The values of category codes (`other` for a missing or `UNSEEN` code)."""
    known = ~np.isnan(codes) & (codes >= 0)
    return np.asarray([*cats, other], dtype=object)[np.where(known, codes, len(cats)).astype(int)]


def decoded_frame(table: CustomerTable) -> pd.DataFrame:
    """The table's frame with each categorical feature's codes turned back into its values."""
    frame = table.frame.copy(deep=False)
    for name, cats in table.categories.items():
        frame[name] = category_values(frame[name].to_numpy(), cats, other=None)
    return frame


def _huge_rows(values: np.ndarray) -> np.ndarray:
    """Rows whose value is infinite or at least `HUGE` in size (NaN is neither)."""
    with np.errstate(invalid="ignore"):
        # two allocation-free reductions that skip NaN settle the usual case: nothing huge
        if not values.size or (np.fmax.reduce(values) < HUGE and np.fmin.reduce(values) > -HUGE):
            return np.array([], dtype=np.intp)
        return np.flatnonzero(np.abs(values) >= HUGE)


MAX_CATEGORIES = 20
"""A text feature with at most this many distinct values is read as categorical."""
UNSEEN = -1.0
"""The code of a value outside a model's categories: one-hot encoded as all zeros."""


@dataclass
class _Categories:
    """Which features are categorical (named, or text with few values) and their values:
    fixed by a model (`given`), else found in the data (`found`)."""

    named: set[str]
    given: dict[str, tuple[str, ...]]
    found: dict[str, tuple[str, ...]] = field(default_factory=dict)
    unseen: dict[str, np.ndarray] = field(default_factory=dict)

    def wants(self, column: str, values: Any) -> bool:
        """Whether `column` (an Arrow column) is categorical."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if column in self.named or column in self.given:
            return True
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            return False
        # a numeric column with stray text has many values: a prefix settles it, no full pass
        if _distinct_text(pc.utf8_trim_whitespace(values.slice(0, 1 << 16))) > MAX_CATEGORIES:
            return False
        text = pc.utf8_trim_whitespace(values)
        numeric = pc.sum(pc.is_valid(_try_float(text))).as_py() or 0
        present = len(text) - text.null_count
        if numeric * 2 >= present:
            return False
        # few values, each repeated: a category; a column of distinct words is broken data
        distinct = _distinct_text(text)
        found = 2 <= distinct <= MAX_CATEGORIES and distinct * 2 <= present
        if found:
            log.info("column %r holds text with %d distinct values: read as categorical",
                     column, distinct)  # fmt: skip
        return found

    def codes(self, uri: str, column: str, values: Any) -> np.ndarray:
        """Each row's category code (NaN when missing, `UNSEEN` outside given categories)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        text = pc.utf8_trim_whitespace(values.cast(pa.string()))
        text = pc.if_else(pc.is_in(text, pa.array(MISSING_TOKENS)), pa.scalar(None, pa.string()),
                          text)  # fmt: skip
        if column in self.given:
            cats = tuple(self.given[column])
        else:
            cats = tuple(sorted(v for v in pc.unique(text).to_pylist() if v is not None))
            if len(cats) > MAX_CATEGORIES:
                raise InputError(
                    f"{uri}: categorical column {column!r} has {len(cats)} distinct values "
                    f"(at most {MAX_CATEGORIES}); group its rare values or drop it from "
                    "--features"
                )
        index = pc.index_in(text, value_set=pa.array(cats, pa.string()))
        codes = index.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN
        outside = np.flatnonzero(np.isnan(codes) & pc.is_valid(text).to_numpy(zero_copy_only=False))
        codes[outside] = UNSEEN
        if outside.size:
            self.unseen[column] = outside
        self.found[column] = cats
        return codes


def _category_plan(
    uri: str,
    features: Any,
    feats: list[str],
    categorical: Any,
    categories: dict[str, tuple[str, ...]] | None,
) -> _Categories:
    """Which of the resolved feature columns `feats` (asked for as `features`) are
    categorical: those `categorical` names (matched like features), and those a model's
    `categories` fix, keyed by the column each feature resolved to."""
    named = set()
    for name in categorical:
        try:
            named.add(resolve_column(name, feats, source=uri))
        except InputError:
            raise InputError(f"{uri}: categorical column {name!r} is not among the features "
                             f"{feats}; add it to --features or drop it from --categorical"
                             ) from None  # fmt: skip
    column_of = dict(zip(features, feats, strict=True))
    given = {column_of[f]: tuple(v) for f, v in (categories or {}).items() if f in column_of}
    return _Categories(named, given)


def _try_float(text: Any) -> Any:
    """Text cast to float where it parses, null elsewhere."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ok = pc.match_substring_regex(text, r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
    return pc.if_else(ok, text, pa.scalar(None, pa.string()))


def _distinct_text(text: Any) -> int:
    """Distinct non-missing values of a text column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    present = pc.filter(text, pc.invert(pc.is_in(text, pa.array(MISSING_TOKENS))))
    return len(pc.unique(pc.drop_null(present)))


def _feature_frame(
    uri: str,
    table: Any,
    feats: list[str],
    idc: str | None,
    line_of: Any,
    word: str,
    kinds: _Categories | None = None,
) -> tuple[pd.DataFrame, dict[str, np.ndarray], list[str]]:
    """The id and features of an Arrow table as a DataFrame, the invalid rows per reason
    and the warnings naming them; float columns go straight from Arrow to NumPy, categorical
    ones become codes (`_Categories`)."""
    import pyarrow as pa

    kinds = kinds or _Categories(set(), {})
    warnings: list[str] = []
    invalid_rows: dict[str, list[np.ndarray]] = {"non_numeric": [], "non_finite": []}
    columns: dict[str, Any] = {}
    ids = _id_series(table.column(idc)) if idc else None
    if idc:
        columns[idc] = ids
    for col in feats:
        column = table.column(col)
        if col != idc and kinds.wants(col, column):
            columns[col] = kinds.codes(uri, col, column)
            continue
        if col != idc and pa.types.is_floating(column.type):
            values = np.asarray(column.to_numpy(), dtype=np.float64)  # nulls become NaN
        else:
            series = ids if col == idc else column.to_pandas()
            if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(
                series.dtype
            ):
                values = series.to_numpy(dtype="float64", na_value=np.nan)
            else:
                values, bad, more = _coerce_numeric(uri, col, series, line_of, word)
                invalid_rows["non_numeric"].append(bad)
                warnings.extend(more)
        infinite = _huge_rows(values)
        if infinite.size:
            lines = ", ".join(str(line_of(int(r))) for r in infinite[:_MAX_REPORTED])
            warnings.append(
                f"{uri}: column {col!r} has {infinite.size} infinite or huge (|x| >= {HUGE:g}) "
                f"value(s) ({word} {lines}{', ...' if infinite.size > _MAX_REPORTED else ''}); "
                "those rows are dropped"
            )
            values = values.copy()
            values[infinite] = np.nan
            invalid_rows["non_finite"].append(infinite)
        columns[col] = values
    invalid = {
        reason: np.unique(np.concatenate(parts)) if parts else np.array([], dtype=np.int64)
        for reason, parts in invalid_rows.items()
    }
    # copy=False: each column stays its own array (no copy into one 2-D float block)
    frame = pd.DataFrame(columns, index=pd.RangeIndex(table.num_rows), copy=False)
    return frame, {k: v for k, v in invalid.items() if v.size}, warnings


def _read_parquet(
    uri: str, features: tuple[str, ...] | list[str], id_column: str | None, needed_by: str | None
) -> tuple[Any, list[str], str | None]:
    """The wanted columns of a Parquet file as an Arrow table, the features' and the id's
    column names."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with _parquet_source(uri) as src:
            pf = pq.ParquetFile(src)
            header = list(pf.schema_arrow.names)
            _check_header(uri, header)
            feats = [resolve_column(f, header, source=uri, needed_by=needed_by) for f in features]
            _check_distinct(uri, features, feats)
            idc = (
                resolve_column(id_column, header, source=uri)
                if id_column
                else find_id_column(header)
            )
            wanted = ([idc] if idc else []) + [f for f in feats if f != idc]
            table = pf.read(columns=wanted)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{uri}: not a readable Parquet file ({exc})") from None
    return table, feats, idc


WORK_PARQUET = {"compression": "lz4"}
"""Work tables are written for speed (lz4), not for archival size."""

_REASONS = ("", "non_numeric", "non_finite")


def write_parquet(frame: pd.DataFrame, uri: str, *, metadata: dict[str, Any] | None = None) -> None:
    """Write a DataFrame to a Parquet file, streaming (no whole-file bytes in memory)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata is not None:
        arrow = arrow.replace_schema_metadata(
            {**(arrow.schema.metadata or {}), b"custseg": json.dumps(metadata).encode()}
        )
    # dictionary-encoding near-unique ids costs a failed attempt per page: numbers only
    dictionary = [f.name for f in arrow.schema if not pa.types.is_string(f.type)]
    if storage.is_remote(uri):
        with storage.open_file(uri, "wb") as fh:
            pq.write_table(arrow, fh, use_dictionary=dictionary, **WORK_PARQUET)
    else:
        pq.write_table(arrow, str(storage.local_path(uri)), use_dictionary=dictionary,
                       **WORK_PARQUET)  # fmt: skip


def read_parquet(uri: str, *, columns: list[str] | None = None) -> Any:
    """A Parquet file as an Arrow table (only `columns`, when given)."""
    import pyarrow.parquet as pq

    with _parquet_source(uri) as src:
        return pq.read_table(src, columns=columns)


@contextlib.contextmanager
def _parquet_source(uri: str) -> Iterator[Any]:
    """What pyarrow should read: a local path as a string, a remote file as bytes in memory.

    pyarrow is never handed a Python file object: its thread pool can then abort or hang
    at interpreter exit (apache/arrow#34314, #50482), which turned clean exits into SIGABRT.
    """
    import pyarrow as pa

    if storage.is_remote(uri):
        yield pa.BufferReader(storage.read_bytes(uri))
    else:
        yield str(storage.local_path(uri))


def save_table(table: CustomerTable, uri: str) -> None:
    """Write a loaded table to Parquet with everything `read_table` needs to rebuild it."""
    frame = table.frame.copy(deep=False)
    reason = np.zeros(len(frame), dtype=np.int8)
    for why, rows in table.invalid.items():
        reason[rows] = _REASONS.index(why)
    frame["__invalid"] = reason
    meta = {
        "features": list(table.features),
        "id_column": table.id_column,
        "source": table.source,
        "file_format": table.file_format,
        "n_rows_read": table.n_rows_read,
        "sha256": table.sha256,
        "warnings": list(table.warnings),
        "header_line": table.header_line,
        "delimiter": table.delimiter,
        "categories": {c: list(v) for c, v in table.categories.items()},
        "unseen": {c: v.tolist() for c, v in table.unseen.items()},
    }
    write_parquet(frame, uri, metadata=meta)


def table_metadata(uri: str) -> dict[str, Any]:
    """The metadata `save_table` stored (source, sha256, ...), without reading the rows."""
    import json

    import pyarrow.parquet as pq

    with _parquet_source(uri) as src:
        return json.loads(pq.read_schema(src).metadata[b"custseg"])


def read_table(uri: str) -> CustomerTable:
    """Read back a table written by `save_table`."""
    import json

    arrow = read_parquet(uri)
    meta = json.loads(arrow.schema.metadata[b"custseg"])
    reason = arrow.column("__invalid").to_numpy()
    arrow = arrow.drop_columns(["__invalid"])
    frame = _arrow_frame(arrow, meta["id_column"])
    invalid = {
        why: np.flatnonzero(reason == code)
        for code, why in enumerate(_REASONS)
        if code and (reason == code).any()
    }
    return CustomerTable(
        frame=frame,
        features=tuple(meta["features"]),
        id_column=meta["id_column"],
        source=meta["source"],
        file_format=meta["file_format"],
        n_rows_read=int(meta["n_rows_read"]),
        sha256=meta["sha256"],
        invalid=invalid,
        warnings=tuple(meta["warnings"]),
        header_line=int(meta.get("header_line", 1)),
        delimiter=str(meta.get("delimiter", ",")),
        categories={c: tuple(v) for c, v in meta.get("categories", {}).items()},
        unseen={c: np.asarray(v, dtype=np.int64) for c, v in meta.get("unseen", {}).items()},
    )
