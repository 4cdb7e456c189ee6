"""Erasure of a data subject's records, from request to proof (the ledger: core/data/erasure.py).

`request_erasure` finds the records (by id, or every row whose text contains a given string such
as an e-mail address or a customer id) in the task's labelled examples, designated suite files and
production log; records them in the ledger as hashes; finds every registered version whose
training rows held one (its rebuild manifest lists the ids it trained on) and tags it
`ERASED_BY_TAG`, so promotion and rollback refuse it from then on; clears `previous-champion` when
it names such a version; and deletes a frozen suite that held one (the next run freezes a new one
without it). From then on every reader leaves the records out (`ErasureLedger.erased`).

While the serving champion is itself affected, the request stays open and the task's
`erasure_retrain_sensor` requests a retrain (trigger `erasure`, no cooldown). `complete_erasures`
closes every open request whose affected versions no longer serve: it deletes their artifacts
(`purge_version`: the training run's MLflow artifacts, with the adapter bundle and the curated
snapshot's evidence; the local adapter, export and rebuild directories; the curated dataset
snapshot; the row store files of their rows), deletes every other copy of rows that still holds
the text (ROW_COPY_DIRS), then scans every file of the state directory for the records' text and
writes the result to the ledger: the versions affected, the champion that
replaced them, what was deleted, and how many files still hold the text (zero, or the request says
which).

The scan looks for each record's text as written, NFKC-normalized, PII-scrubbed (what training
saw) and JSON-escaped, for texts of at least SCAN_MIN_CHARS characters (a shorter text, "refund
please", would match unrelated rows). It reads the texts back from the task's sources, which the
loop does not own: a team that has already deleted the record there gets an id-less scan ("no
text left at the source to scan for"), said in the request's record.
"""

from __future__ import annotations

import json
import shutil
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.common.row_store import ROWS_STAGE, RowStore
from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.common.tracker import CHAMPION_ALIAS, PREVIOUS_CHAMPION_ALIAS, Tracker
from finetune_loop.core.data.erasure import ErasureError, ErasureLedger, ErasureRequest
from finetune_loop.core.data.pii import scrub_pii
from finetune_loop.core.data.production_log import read_task_log
from finetune_loop.core.data.readers import read_examples
from finetune_loop.core.data.suites import SUITE_NAMES, suite_paths
from finetune_loop.core.data.validation import read_labeled_examples
from finetune_loop.core.ship.registry import ERASED_BY_TAG, registry_lock
from finetune_loop.core.train.trainer import ADAPTER_WEIGHTS_FILE, REBUILD_MANIFEST_FILE

SCAN_MIN_CHARS = 16


@dataclass(frozen=True)
class FoundRecord:
    record_id: str
    text: str
    # Where it was found: "labelled examples", "holdout file", "production log".
    where: str
    # The row's data source (data.sources); None for production requests and rejected rows.
    source: str | None = None


@dataclass(frozen=True)
class ErasureOutcome:
    request: ErasureRequest
    found: dict[str, int]  # records per place
    suites_deleted: list[str]
    champion: str | None
    champion_affected: bool


def source_rows(spec: TaskSpec, *, leave_out_erased: bool = True) -> list[FoundRecord]:
    """Every row of the task's sources: labelled examples, the designated holdout and regression
    files, and the production log (requests and their feedback); rejected rows too, named by their
    line (they have no id of their own, their text still identifies them)."""
    rows: list[FoundRecord] = []
    for where, path in (("labelled examples", None), ("holdout file", spec.holdout_path), ("regression file", spec.regression_path)):
        if where != "labelled examples" and path is None:
            continue
        examples, quarantine = read_labeled_examples(spec, path, leave_out_erased=leave_out_erased)
        rows += [FoundRecord(e.id, e.text, where, e.source) for e in examples]
        for entry in quarantine:
            row = entry.get("row")
            text = row.get(spec.fields.input) if isinstance(row, dict) else None
            if isinstance(text, str):
                rows.append(FoundRecord(f"{where} line {entry.get('line')}", text, where))
    if spec.production_log_path is not None and spec.production_log_path.exists():
        log = read_task_log(spec, check_labels=False, leave_out_erased=leave_out_erased)
        rows += [FoundRecord(r.request_id, r.text, "production log") for r in log.records]
    return rows


def find_records(spec: TaskSpec, ids: Sequence[str], contains: str | None, source: str | None = None) -> list[FoundRecord]:
    """The rows not erased yet whose id is in `ids`, whose text contains `contains`
    (case-insensitive), or that come from data source `source` (a revoked licence)."""
    wanted, needle = set(ids), contains.casefold() if contains else None
    return [r for r in source_rows(spec)
            if r.record_id in wanted or (needle is not None and needle in r.text.casefold()) or (source is not None and r.source == source)]


def _manifest(tracker: Tracker, model_name: str, version: str, scratch: Path) -> dict | None:
    ref = tracker.version_ref(model_name, version)
    try:
        path = tracker.download_version_file(ref, REBUILD_MANIFEST_FILE, scratch / f"v{version}")
    except Exception:  # noqa: BLE001 - a version without a manifest (or whose artifacts are gone) trained on nothing we know
        return None
    return json.loads(path.read_text())


def affected_versions(tracker: Tracker, model_name: str, record_ids: set[str], scratch: Path) -> list[str]:
    """The registered versions whose training rows (rebuild manifest) hold one of `record_ids`."""
    affected = []
    for version in sorted(tracker.all_version_tags(model_name), key=int):
        manifest = _manifest(tracker, model_name, version, scratch)
        if manifest and record_ids & {row["id"] for row in manifest.get("training_rows", [])}:
            affected.append(version)
    return affected


def request_erasure(
    spec: TaskSpec, home: LoopHome, tracker: Tracker, *, ids: Sequence[str] = (), contains: str | None = None,
    source: str | None = None, reason: str,
) -> ErasureOutcome:
    """Record the request and mark what it touches (see the module docstring). `source` erases
    every row of a data source, the path of a revoked licence."""
    if not ids and not contains and not source:
        raise ErasureError("name the records: record ids, a string their text contains (an e-mail address, a customer id), or a data source")
    records = find_records(spec, ids, contains, source)
    if not records:
        raise ErasureError(f"no row of {spec.name}'s sources matches the ids, string or source given: nothing recorded")
    model_name = spec.registered_model_name
    scratch = home.task_dir(spec.name, "erasure") / "manifests"
    affected = affected_versions(tracker, model_name, {r.record_id for r in records}, scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    ledger = ErasureLedger.load(spec.erasure_ledger_path)
    request = ledger.record_request([(r.record_id, r.text) for r in records], reason, contains or (source and f"source:{source}"), affected)
    with registry_lock(home.task_dir(spec.name, "locks"), model_name):
        tags = tracker.all_version_tags(model_name)
        for version in affected:
            earlier = tags[version].get(ERASED_BY_TAG)
            tracker.tag_version(model_name, version, {ERASED_BY_TAG: f"{earlier},{request.request}" if earlier else request.request})
        _clear_erased_rollback_target(tracker, model_name)
        champion = tracker.version_by_alias(model_name, CHAMPION_ALIAS)
    suites_deleted = _delete_suites_holding(spec, home, ledger)
    found: dict[str, int] = {}
    for record in records:
        found[record.where] = found.get(record.where, 0) + 1
    return ErasureOutcome(request, found, suites_deleted, champion.version if champion else None,
                          champion is not None and champion.version in affected)


def _clear_erased_rollback_target(tracker: Tracker, model_name: str) -> None:
    """`previous-champion` never names a version tagged ERASED_BY_TAG (rollback would refuse it anyway)."""
    previous = tracker.version_by_alias(model_name, PREVIOUS_CHAMPION_ALIAS)
    if previous is not None and tracker.version_tags(model_name, previous.version).get(ERASED_BY_TAG):
        tracker.delete_alias(model_name, PREVIOUS_CHAMPION_ALIAS)


def _delete_suites_holding(spec: TaskSpec, home: LoopHome, ledger: ErasureLedger) -> list[str]:
    """Frozen suites (current and archived versions) holding an erased row are deleted: a frozen
    suite never changes, so the next run freezes a new one, which leaves the records out."""
    suites_dir = home.task_dir(spec.name, "suites")
    deleted = []
    for name in SUITE_NAMES:
        suite_path, manifest_path = suite_paths(suites_dir, name)
        for path in [suite_path, *sorted((suites_dir / "archive").glob(f"{name}.v*.jsonl"))]:
            if path.is_file() and any(ledger.erased(e.id, e.text) for e in read_examples(path)):
                path.unlink()
                path.with_name(path.name.removesuffix(".jsonl") + ".manifest.json").unlink(missing_ok=True)
                deleted.append(str(path.relative_to(suites_dir)))
    return deleted


def purge_version(spec: TaskSpec, home: LoopHome, tracker: Tracker, version: str, archive_dir: Path) -> list[str]:
    """Delete what a version made that holds its training rows or what it learned from them: its
    training run's MLflow artifacts (adapter bundle, shipped GGUF, curation evidence), its local
    adapter, export and rebuild directories, its curated dataset snapshot and the row store files
    of its rows. Under `erasure.affected_artifacts: archive_weights` its adapter weights and GGUFs
    are first copied to `archive_dir`/v<version>. Returns the paths deleted (MLflow artifacts as
    `mlflow:<run id>`). The registry entry stays, tagged, so the history still says the version
    existed and why it is gone."""
    model_name = spec.registered_model_name
    ref = tracker.version_ref(model_name, version)
    tags = tracker.version_tags(model_name, version)
    scratch = home.task_dir(spec.name, "erasure") / "manifests"
    manifest = _manifest(tracker, model_name, version, scratch) or {}
    if spec.erasure.affected_artifacts == "archive_weights":
        _archive_weights(tracker, ref, home.artifacts / "exports" / spec.name / f"v{version}", archive_dir / f"v{version}", scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    store = RowStore.for_home(home)
    local = [
        home.artifacts / "adapters" / spec.name / tags.get("dagster_run_id", "-"),
        home.artifacts / "exports" / spec.name / f"v{version}",
        home.artifacts / "rebuilds" / spec.name / f"v{version}",
        home.artifacts / "datasets" / spec.name / tags.get("data_version", "-"),
        *[store.path(manifest[key]) for key in ("train_rows_sha256", "validation_rows_sha256") if manifest.get(key)],
    ]
    deleted = []
    tracker.delete_run_artifacts(ref.run_id)
    deleted.append(f"mlflow:{ref.run_id}")
    for path in local:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.is_file():
            path.unlink()
        else:
            continue
        deleted.append(str(path.relative_to(home.root)))
    return deleted


def _archive_weights(tracker: Tracker, ref, export_dir: Path, target: Path, scratch: Path) -> None:
    """The version's adapter weights and every GGUF made of it, copied to `target` (weights hold no row text)."""
    target.mkdir(parents=True, exist_ok=True)
    bundle = tracker.download_version(ref, scratch / "bundle")
    for path in [bundle / ADAPTER_WEIGHTS_FILE, *sorted(bundle.glob("*.gguf")), *sorted(export_dir.glob("*.gguf"))]:
        if path.is_file() and not (target / path.name).exists():
            shutil.copy2(path, target / path.name)


def scan_needles(texts: Sequence[str]) -> list[bytes]:
    """The byte strings a stored copy of each text could take (see the module docstring)."""
    needles: set[bytes] = set()
    for text in texts:
        forms = {text, unicodedata.normalize("NFKC", text), scrub_pii(text).text}
        forms |= {json.dumps(form)[1:-1] for form in list(forms)} | {json.dumps(form, ensure_ascii=False)[1:-1] for form in list(forms)}
        needles |= {form.encode("utf-8", "surrogatepass") for form in forms if len(form) >= SCAN_MIN_CHARS}
    return sorted(needles)


def scan_for(root: Path, needles: Sequence[bytes]) -> dict:
    """Every file under `root` searched for every needle: files and bytes read, and the files holding one."""
    files, total, holding = 0, 0, []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        content = path.read_bytes()
        files, total = files + 1, total + len(content)
        if any(needle in content for needle in needles):
            holding.append(str(path.relative_to(root)))
    return {"files": files, "bytes": total, "needles": len(needles), "files_holding_text": holding}


def complete_erasures(spec: TaskSpec, home: LoopHome, tracker: Tracker) -> list[dict]:
    """Close every open request whose affected versions no longer serve: purge them, scan the state
    directory, and record the outcome in the ledger. A request whose affected version is still the
    champion stays open (its retrain has not shipped yet); so does one whose scan still finds the
    text, with the files named in the returned entry (not recorded as completed)."""
    ledger = ErasureLedger.load(spec.erasure_ledger_path)
    model_name = spec.registered_model_name
    champion = tracker.version_by_alias(model_name, CHAMPION_ALIAS)
    # The promotion that replaced an affected champion made it previous-champion.
    _clear_erased_rollback_target(tracker, model_name)
    outcomes = []
    everything: list[FoundRecord] | None = None  # the sources, read once for every request
    for request in ledger.open_requests():
        if champion is not None and champion.version in request.affected_versions:
            outcomes.append({"request": request.request, "open": f"champion v{champion.version} trained on the records: waiting for its retrain to ship"})
            continue
        archive_dir = home.task_dir(spec.name, "erasure") / "archive" / request.request
        deleted = [path for version in request.affected_versions for path in purge_version(spec, home, tracker, version, archive_dir)]
        everything = source_rows(spec, leave_out_erased=False) if everything is None else everything
        texts = [r.text for r in everything if ledger.record_hash(r.record_id) in request.record_hashes
                 or ledger.text_hash(r.text) in request.text_hashes]
        if texts:
            scan = scan_for(home.root, scan_needles(texts))
            # Deleting a file moves no text elsewhere: what the scan found, less the copies deleted, still holds it.
            removed = _delete_row_copies_holding(home, scan["files_holding_text"])
            deleted += removed
            scan["files_holding_text"] = [path for path in scan["files_holding_text"] if path not in removed]
        else:
            scan = {"files": 0, "bytes": 0, "needles": 0, "files_holding_text": [], "note": "no text left at the source to scan for"}
        archived = sorted(str(p.relative_to(home.root)) for p in archive_dir.rglob("*") if p.is_file()) if archive_dir.is_dir() else []
        entry = {"affected_versions": list(request.affected_versions), "champion": champion.version if champion else None,
                 "deleted": deleted, "archived": archived, "scan": scan}
        if scan["files_holding_text"]:
            outcomes.append({"request": request.request, "open": f"the text is still stored in {scan['files_holding_text']}", **entry})
            continue
        outcomes.append(ledger.record_completion(request, entry))
    return outcomes


# Directories whose files are copies of rows, remade from the sources whenever they are needed:
# the row store, curated dataset snapshots, frozen and recent suites, the feedback curation reads,
# curation evidence logged to MLflow ("dataset") and drift reports (Evidently's HTML embeds the
# rows it compares).
ROW_COPY_DIRS = frozenset({ROWS_STAGE, "datasets", "suites", "feedback", "dataset", "drift"})


def _delete_row_copies_holding(home: LoopHome, holding: Sequence[str]) -> list[str]:
    """A file holding an erased text that is a copy of rows (ROW_COPY_DIRS) is deleted, whichever
    version it served: an unaffected version that only validated on the record, or was evaluated on
    a suite that held it, keeps its weights but loses that copy (its rebuild then says the rows are
    gone). Any other file holding the text stays and keeps the request open, named."""
    deleted = []
    for relative in holding:
        if ROW_COPY_DIRS & set(Path(relative).parts[:-1]):
            (home.root / relative).unlink()
            deleted.append(relative)
    return deleted
