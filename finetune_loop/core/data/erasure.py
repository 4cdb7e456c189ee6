"""The erasure ledger: which records a data subject asked to be forgotten, kept as hashes only.

`finetune-loop erase` appends one request per data subject's request to the task's ledger
(`data.erasure_ledger`, by default `<task name>.erasures.jsonl` beside the task file, so it travels
with the task and every environment that runs it honours it). The ledger is append-only JSONL:

* a header with a random salt, written once;
* `request` lines: when, the reason the operator gave, and salted SHA-256 hashes of each matched
  record's id and of its normalized text (`normalize_text`), never the ids or texts themselves;
  the rule that matched them (an e-mail address, a customer id) is kept as a hash too;
* `completed` lines: the versions that had trained on the records, the champion that replaced
  them, what was deleted and the scan that found no stored copy of the records' text left.

Every reader of labelled rows and of the production log asks `ErasureLedger.erased` for each row:
an erased row never reaches curation, a suite, the recent suite or the feedback counts, and it is
counted (without its content) where it was left out. A row matches by its id or by its text, so
the same text imported again under another id stays out.

The salt defeats lookup tables, not enumeration: an id space small enough to try every value
(sequential numbers) can be tested against the hashes by whoever holds the ledger.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from finetune_loop.core.common.clock import utc_now
from finetune_loop.core.common.examples import normalize_text

# The quarantine reason kind of an erased row (rows are dropped with this reason, never kept).
ERASED_REASON = "erased"


class ErasureError(RuntimeError):
    """An erasure request that cannot be recorded (nothing matched, a broken ledger)."""


@dataclass(frozen=True)
class ErasureRequest:
    request: str
    at: str
    reason: str
    record_hashes: frozenset[str]
    text_hashes: frozenset[str]
    rule_sha256: str | None
    # Registered versions whose training rows held one of the records, when the request was made.
    affected_versions: tuple[str, ...] = ()


@dataclass
class ErasureLedger:
    path: Path
    salt: str | None = None
    requests: list[ErasureRequest] = field(default_factory=list)
    completed: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "ErasureLedger":
        """The ledger at `path`; an empty one when the file does not exist yet."""
        ledger = cls(Path(path))
        if not ledger.path.is_file():
            return ledger
        for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                kind = entry["kind"]
                if kind == "ledger":
                    ledger.salt = entry["salt"]
                elif kind == "request":
                    ledger.requests.append(ErasureRequest(
                        entry["request"], entry["at"], entry["reason"], frozenset(entry["record_hashes"]),
                        frozenset(entry["text_hashes"]), entry.get("rule_sha256"), tuple(entry.get("affected_versions", ())),
                    ))
                elif kind == "completed":
                    ledger.completed[entry["request"]] = entry
                else:
                    raise KeyError(f"unknown kind {kind!r}")
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                # Refusing to read on would silently un-erase every record after this line.
                raise ErasureError(f"{path}:{number}: not a ledger entry ({exc}); the ledger is append-only: restore it from version control") from None
        if ledger.requests and ledger.salt is None:
            raise ErasureError(f"{path}: requests without the ledger's header (its salt): restore the file from version control")
        return ledger

    def _hash(self, kind: str, value: str) -> str:
        if self.salt is None:
            raise ErasureError("the ledger has no salt yet (no request was ever recorded)")
        return hashlib.sha256(f"{self.salt}\0{kind}\0{value}".encode("utf-8", "surrogatepass")).hexdigest()

    def record_hash(self, record_id: str) -> str:
        return self._hash("id", record_id)

    def text_hash(self, text: str) -> str:
        return self._hash("text", normalize_text(text))

    def erased(self, record_id: str | None, text: str | None) -> str | None:
        """The request that erased this row (by its id or its text), or None."""
        if not self.requests:
            return None
        id_hash = self.record_hash(record_id) if record_id else None
        text_hash = self.text_hash(text) if text else None
        for request in self.requests:
            if id_hash in request.record_hashes or text_hash in request.text_hashes:
                return request.request
        return None

    def open_requests(self) -> list[ErasureRequest]:
        return [r for r in self.requests if r.request not in self.completed]

    def _append(self, entry: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")

    def record_request(
        self, records: Iterable[tuple[str, str]], reason: str, rule: str | None, affected_versions: Iterable[str],
    ) -> ErasureRequest:
        """Append a request for `records` ((id, raw text) pairs) and return it."""
        records = list(records)
        if not records:
            raise ErasureError("no record matched: nothing to erase (the ledger is unchanged)")
        if self.salt is None:
            self.salt = secrets.token_hex(16)
            self._append({"kind": "ledger", "salt": self.salt, "created": utc_now().isoformat()})
        request = ErasureRequest(
            f"er-{uuid.uuid4().hex[:12]}", utc_now().isoformat(), reason,
            frozenset(self.record_hash(i) for i, _ in records), frozenset(self.text_hash(t) for _, t in records),
            self._hash("rule", rule) if rule else None, tuple(sorted(set(affected_versions), key=int)),
        )
        self._append({
            "kind": "request", "request": request.request, "at": request.at, "reason": reason,
            "record_hashes": sorted(request.record_hashes), "text_hashes": sorted(request.text_hashes),
            "rule_sha256": request.rule_sha256, "affected_versions": list(request.affected_versions), "records": len(records),
        })
        self.requests.append(request)
        return request

    def record_completion(self, request: ErasureRequest, entry: dict) -> dict:
        completed = {"kind": "completed", "request": request.request, "at": utc_now().isoformat(), **entry}
        self._append(completed)
        self.completed[request.request] = completed
        return completed
