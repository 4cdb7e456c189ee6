"""File helpers shared by the stages: content hashes (data versions, provenance) and atomic writing
(JSONL and text): a reader sees the old file or the whole new one, never a partial write."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import IO, Iterator


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(directory: Path) -> str:
    """One hash over every file under `directory`: relative paths and contents, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0" + sha256_file(path).encode())
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` for a writer that takes a file name (the GGUF writer, llama.cpp's
    quantizer); it replaces `path` (os.replace, atomic on one file system) only once the block
    finished without error, and on error is removed while `path` keeps its old content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _atomic_open(path: Path, encoding: str = "utf-8", errors: str = "strict") -> Iterator[IO[str]]:
    """A text handle on a temporary sibling of `path` (see atomic_path), flushed to disk before it
    replaces `path`. The sibling is created like any new file (the usual permissions)."""
    with atomic_path(path) as temporary:
        with temporary.open("x", encoding=encoding, errors=errors) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically: the old content or the new one, never a mix."""
    with _atomic_open(path) as handle:
        handle.write(text)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line, written atomically (a row that fails to serialise leaves the old file)."""
    # A lone surrogate (an undecodable byte kept by surrogateescape, in a quarantined row) becomes the
    # JSON escape \udcXX, so the file stays valid UTF-8 and reads back to the same string.
    with _atomic_open(path, errors="backslashreplace") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def inline_png_markdown(path: Path, alt: str) -> str:
    """A PNG as a markdown image with a data URI: the Dagster UI shows it without access to the
    state directory."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"
