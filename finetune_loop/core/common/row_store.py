"""Rows kept by content: what a model was trained and judged on, under the hash of its bytes.

Every training run puts the exact rows it fed the trainer (after the max_train_examples sample)
and the frozen holdout it was measured on here, and its rebuild manifest names them by SHA-256. A
rebuild then reads the rows by hash, so it never depends on today's source files (which may have
been edited, re-exported or erased since), and a changed byte is an error, not a different model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from finetune_loop.core.common.examples import Example
from finetune_loop.core.common.files import atomic_path, sha256_file
from finetune_loop.core.common.home import LoopHome

ROWS_STAGE = "rows"


class RowStoreError(RuntimeError):
    """The rows a record names are not in the store, or no longer hash to their name."""


def rows_jsonl(rows: Sequence[Example]) -> bytes:
    """The canonical bytes of `rows`: one sorted-key JSON object per line, as every writer of the loop writes them."""
    return "".join(json.dumps(asdict(r), ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8", "backslashreplace")


class RowStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    @classmethod
    def for_home(cls, home: LoopHome) -> "RowStore":
        return cls(home.artifacts / ROWS_STAGE)

    def path(self, digest: str) -> Path:
        return self.root / f"{digest}.jsonl"

    def put_bytes(self, content: bytes) -> str:
        """Store `content` under its SHA-256 (once: the same rows are one file) and return the hash."""
        digest = hashlib.sha256(content).hexdigest()
        target = self.path(digest)
        if not target.is_file():
            with atomic_path(target) as temporary:
                temporary.write_bytes(content)
        return digest

    def put_rows(self, rows: Sequence[Example]) -> str:
        return self.put_bytes(rows_jsonl(rows))

    def put_file(self, path: Path) -> str:
        """A file as it is (a frozen suite keeps the hash it was frozen with)."""
        return self.put_bytes(Path(path).read_bytes())

    def verified_path(self, digest: str, what: str) -> Path:
        """The stored file named `digest`, after checking its bytes still hash to it; `what` names
        the rows in the error ("training rows of v3")."""
        path = self.path(digest)
        if not path.is_file():
            raise RowStoreError(f"{what}: no rows with sha256 {digest} in {self.root} (deleted, or stored on another machine's state directory)")
        found = sha256_file(path)
        if found != digest:
            raise RowStoreError(f"{what}: {path} hashes to {found}, not to the {digest} it is stored under: the file was changed")
        return path
