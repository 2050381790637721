"""Where training data comes from: JSONL, JSON or Parquet, a file or a folder of them, on a local
path, a ``file://`` URI or any object store fsspec knows (``s3://bucket/prefix``, ``gs://``, …).

Every item comes with where it was found (``train.parquet:row 17``, ``part-2.jsonl:line 9``), so a
rejected record names its file and line. A folder (or an object-store prefix) is read in name order,
every ``.jsonl``/``.json``/``.parquet`` file in it and below; other files are skipped. S3 credentials
and endpoint come from the usual AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, …).
A source larger than ``max_bytes`` in all is refused before anything is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

FORMATS = (".jsonl", ".json", ".parquet")
DEFAULT_MAX_BYTES = 4 << 30


class SourceError(ValueError):
    """The source cannot be read; the message names it and why."""


@dataclass(frozen=True)
class Item:
    file: str  # the file's name relative to the source (its full URI for a single file)
    line: int  # line (JSONL), element (JSON array) or row (Parquet), from 1
    raw: str | dict[str, Any]

    @property
    def where(self) -> str:
        return location(self.file, self.line)


def location(file: str, line: int) -> str:
    """``b.jsonl:line 9``, ``a.parquet:row 17``, or ``line 9`` for lines without a file (stdin)."""
    unit = "row" if file.endswith(".parquet") else "line"
    return f"{file + ':' if file else ''}{unit} {line}"


def _filesystem(uri: str) -> tuple[Any, str]:
    import fsspec

    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        from pathlib import Path

        path = str(Path(parts.path if parts.scheme else uri).expanduser())
        return fsspec.filesystem("file"), path
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise SourceError(f"{uri}: cannot open this kind of URI ({exc})") from None
    return fs, path


def files_of(uri: str, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Any, list[tuple[str, str]]]:
    """(filesystem, [(path, display name)]) of the data files of a file or folder URI."""
    fs, path = _filesystem(uri)
    try:
        if not fs.exists(path):
            raise SourceError(f"{uri}: no such file or folder")
        if fs.isdir(path):
            found = sorted(p for p in fs.find(path) if PurePosixPath(p).suffix.lower() in FORMATS)
            if not found:
                raise SourceError(f"{uri}: a folder with no {', '.join(FORMATS)} files")
            files = [(p, str(PurePosixPath(p).relative_to(PurePosixPath(path)))) for p in found]
        else:
            if PurePosixPath(path).suffix.lower() not in FORMATS:
                raise SourceError(f"{uri}: not a {'/'.join(FORMATS)} file")
            files = [(path, PurePosixPath(path).name)]
        total = sum(int(fs.size(p) or 0) for p, _ in files)
    except SourceError:
        raise
    except OSError as exc:  # permissions, network, credentials
        raise SourceError(f"{uri}: {exc}") from None
    if total > max_bytes:
        raise SourceError(f"{uri}: {total} bytes of data, over the limit of {max_bytes}")
    return fs, files


def read_items(uri: str, max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[Item]:
    """Every record-shaped item of the source, with where it was found."""
    fs, files = files_of(uri, max_bytes)
    for path, name in files:
        suffix = PurePosixPath(path).suffix.lower()
        try:
            if suffix == ".parquet":
                yield from _parquet(fs, path, name)
            elif suffix == ".json":
                yield from _json(fs, path, name)
            else:
                yield from _jsonl(fs, path, name)
        except SourceError:
            raise
        except OSError as exc:
            raise SourceError(f"{name}: {exc}") from None


def _jsonl(fs: Any, path: str, name: str) -> Iterator[Item]:
    with fs.open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            text = line.decode("utf-8", errors="replace")
            if text.strip():
                yield Item(name, number, text)


def _json(fs: Any, path: str, name: str) -> Iterator[Item]:
    with fs.open(path, "rb") as fh:
        try:
            data = json.loads(fh.read().decode("utf-8", errors="replace"))
        except json.JSONDecodeError as exc:
            raise SourceError(f"{name}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("records"), list):
        data = data["records"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise SourceError(f"{name}: expected a JSON array of records (or an object), got {type(data).__name__}")
    for number, obj in enumerate(data, start=1):
        yield Item(name, number, obj)


def _parquet(fs: Any, path: str, name: str) -> Iterator[Item]:
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as fh:
            table = pq.read_table(fh)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own types for a corrupt file
        raise SourceError(f"{name}: not a readable Parquet file: {exc}") from None
    for number, row in enumerate(table.to_pylist(), start=1):
        yield Item(name, number, {k: v for k, v in row.items() if v is not None})
