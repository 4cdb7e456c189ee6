"""`finetune-loop`: run the whole loop for a task file through Dagster, on the embedded default.

    finetune-loop run --task finetune_loop/tasks/support_triage.yaml
    finetune-loop run --task my_task.yaml --home /data/finetune_loop
    finetune-loop curate --task TASK           # curation alone, with its audit
    finetune-loop simulate-traffic --task TASK --shift phone_keyboard --strength 0.6
    finetune-loop monitor --task TASK          # drift report, retrain triggers, and the retrain they request
    finetune-loop rollback --task TASK --reason "refund tickets misrouted"   # champion back to previous-champion
    finetune-loop rebuild --task TASK --version 3   # retrain v3 from its record alone and compare
    finetune-loop erase --task TASK --contains jane@example.com --reason "DSR-1182"   # forget a data subject
    finetune-loop replace-suite --task TASK --suite holdout
    finetune-loop schema                       # JSON Schema of the task YAML, for editors
    finetune-loop portfolio --tasks DIR        # every task: base vs champion against its gate, drift, export

Exit status: 0 when the candidate passed the gate and shipped, 2 when the gate refused it, 1 when
a step failed (rebuild: 0 when the rebuild matches its record, 1 when it does not or cannot;
erase: 0 when the request is completed, 1 when it stays open, with why).
"""

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from finetune_loop.core.common.home import HOME_ENV_VAR, LoopHome
from finetune_loop.core.common.spec import (
    TaskSpec,
    TaskSpecError,
    load_task_spec,
    task_spec_json_schema,
)

if TYPE_CHECKING:  # Dagster loads only when a command runs the graph, not for --help or rollback.
    from finetune_loop.defs.metadata import (
        ChampionModelMetadata,
        CuratedDatasetMetadata,
        DriftReportMetadata,
        EvalReportMetadata,
        GgufExportMetadata,
        RecentSuiteMetadata,
        SuiteMetadata,
    )

EXIT_OK, EXIT_FAILED, EXIT_GATE_REFUSED = 0, 1, 2
CURATION_ASSETS = ("labeled_examples", "base_model", "holdout_suite", "regression_suite", "recent_suite", "curated_dataset")
SENSOR_CURSORS_FILE = "monitor_sensor_cursors.json"
# The cursors file also keeps the cron tick each schedule was last evaluated at, under its name plus this.
SCHEDULE_TICK_SUFFIX = "@cron_tick"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "schema":
        print(json.dumps(task_spec_json_schema(), indent=2))
        return EXIT_OK
    if args.command == "portfolio":
        return show_portfolio(args)
    try:
        session = Session.open(args.task, args.home)
    except TaskSpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return COMMANDS[args.command](session, args)


def _parser() -> argparse.ArgumentParser:
    from finetune_loop.core.monitor.simulate import SHIFTS

    parser = argparse.ArgumentParser(prog="finetune-loop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Declared once, shared by every command that works on a task.
    task_options = argparse.ArgumentParser(add_help=False)
    task_options.add_argument("--task", required=True, type=Path, help="task YAML file (see finetune_loop/tasks/)")
    task_options.add_argument("--home", type=Path, help="state directory (default: FINETUNE_LOOP_HOME or .finetune_loop/)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", parents=[task_options], help="materialize every asset of the task once, in one Dagster run")
    commands.add_parser("curate", parents=[task_options], help="run curation alone (the same Dagster assets) and print its summary")
    replace = commands.add_parser("replace-suite", parents=[task_options], help="archive a frozen suite so the next run freezes a new version")
    replace.add_argument("--suite", required=True, choices=["holdout", "regression"])
    rollback = commands.add_parser("rollback", parents=[task_options], help="move alias champion back to previous-champion in one step")
    rollback.add_argument("--reason", default="not given", help="why (recorded as a model-version tag with the user)")
    rebuild = commands.add_parser("rebuild", parents=[task_options], help="retrain a registered version from its record alone and compare weights and holdout metrics")
    rebuild.add_argument("--version", required=True, help="registered version number")
    rebuild.add_argument("--tolerance", type=float, default=1.0, help="largest holdout metric difference in points (a label or slice: at least one of its rows)")
    erase = commands.add_parser("erase", parents=[task_options], help="erase a data subject's records: ledger, affected versions, retrain, purge, proof")
    erase.add_argument("--id", dest="ids", action="append", default=[], help="a record id (labelled example id or production request_id); repeatable")
    erase.add_argument("--contains", help="erase every row whose text contains this string (an e-mail address, a customer id); case-insensitive")
    erase.add_argument("--source", help="erase every row of this data source (data.sources), the path of a revoked licence")
    erase.add_argument("--reason", required=True, help="the request's reference (a ticket number), kept in the ledger as written: no personal data")
    simulate = commands.add_parser("simulate-traffic", parents=[task_options], help="append a week of production traffic answered by the current champion")
    simulate.add_argument("--rows", type=int, default=200, help="requests in the week")
    simulate.add_argument("--shift", choices=SHIFTS, default="none", help="how this week differs from the training data")
    simulate.add_argument("--strength", type=float, default=0.5, help="share of requests the shift touches")
    simulate.add_argument("--surge-label", help="label that surges under --shift mix (default: the task's last label)")
    simulate.add_argument("--new-kind-file", type=Path, help="JSONL of new requests (text, label) for --shift new_kind")
    simulate.add_argument("--feedback-share", type=float, default=0.3, help="share of requests a human labels")
    simulate.add_argument("--seed", type=int, default=0)
    commands.add_parser("monitor", parents=[task_options], help="observe the log, report drift, evaluate the retrain sensors and run the retrain they request")
    commands.add_parser("schema", help="print the JSON Schema of the task YAML (point your editor's YAML validation at it)")
    portfolio = commands.add_parser("portfolio", help="every task of a tasks directory: base vs champion against its gate, drift, export")
    portfolio.add_argument("--tasks", type=Path, default=Path(__file__).resolve().parent / "tasks", help="tasks directory (default: the bundled tasks)")
    portfolio.add_argument("--home", type=Path, help="state directory (default: FINETUNE_LOOP_HOME or .finetune_loop/)")
    portfolio.add_argument("--chart", type=Path, help="write the chart (PNG) here too")
    return parser


@dataclass(frozen=True)
class Session:
    """One command's task spec, state directory and tracker, set up the way the Dagster code location
    sees them (FINETUNE_LOOP_HOME, and DAGSTER_HOME under it unless already set), so the runs a
    command makes are the ones `make ui` shows."""

    spec: TaskSpec
    home: LoopHome

    @classmethod
    def open(cls, task_path: Path, home_dir: Path | None) -> "Session":
        spec = load_task_spec(task_path)
        if home_dir is not None:
            os.environ[HOME_ENV_VAR] = str(home_dir.resolve())
        home = LoopHome.from_env()
        os.environ.setdefault("DAGSTER_HOME", str(home.dagster_home))
        Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
        return cls(spec, home)

    def tracker(self):
        from finetune_loop.core.common.tracker import Tracker

        return Tracker.for_task(self.home, self.spec.name)

    def definitions(self):
        from finetune_loop.definitions import build_definitions

        return build_definitions(str(self.spec.spec_path), str(self.home.root))

    def execute(self, job, instance, name: str, tags: dict[str, str], announce: bool = True):
        """Run `job` in-process with Dagster's event log, warnings and progress bars going to a log
        file under the state directory instead of the terminal; print one line per failed step with
        the error's own message, and where the whole trace is."""
        log_dir = self.home.root / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{name}.log"
        if announce:
            print(f"{name:<11} running; Dagster's log: {log_path}", flush=True)
        with open(log_path, "a", encoding="utf-8") as log, contextlib.redirect_stderr(log):
            result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
        for event in result.all_events:
            if event.is_step_failure:
                print(f"error: step {event.step_key} failed: {_user_message(event.step_failure_data.error)} "
                      f"(trace in {log_path})", file=sys.stderr)
        return result

    def run_tags(self) -> dict[str, str]:
        from finetune_loop.defs.resources import SPEC_HASH_TAG, TASK_TAG

        return {TASK_TAG: self.spec.name, SPEC_HASH_TAG: self.spec.spec_sha256}


def replace_suite(session: Session, args) -> int:
    from finetune_loop.core.data.readers import CurationError
    from finetune_loop.core.data.suites import archive_suite

    try:
        archived = archive_suite(session.home.task_dir(session.spec.name, "suites"), args.suite)
    except CurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"archived the {args.suite} suite as {archived}; the next run freezes a new version")
    return EXIT_OK


def rollback_champion(session: Session, args) -> int:
    from finetune_loop.core.ship.registry import PromotionError, alias_state, rollback

    model_name = session.spec.registered_model_name
    tracker = session.tracker()
    try:
        before = alias_state(tracker, model_name)
        after = rollback(tracker, session.home.task_dir(session.spec.name, "locks"), model_name, reason=args.reason)
    except PromotionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"rollback: {model_name} champion v{before.champion} -> v{after.champion} "
          f"(previous-champion now {'v' + after.previous_champion if after.previous_champion else 'none'}); reason: {args.reason}")
    return EXIT_OK


def rebuild(session: Session, args) -> int:
    from finetune_loop.core.common.row_store import RowStore, RowStoreError
    from finetune_loop.core.ship.rebuild import RebuildError, log_rebuild, rebuild_version

    # Downloading the version's bundle would draw a progress bar over the report and its errors.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    spec, home, tracker = session.spec, session.home, session.tracker()
    out_dir = home.task_dir(spec.name, "rebuilds") / f"v{args.version}"
    try:
        report = rebuild_version(spec, args.version, tracker, RowStore.for_home(home), home.artifacts / "base_models", out_dir,
                                 tolerance_points=args.tolerance)
    except (RebuildError, RowStoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    run_id = log_rebuild(tracker, report, out_dir, spec.registered_model_name, session.run_tags())
    print(report.markdown())
    print(f"report: {out_dir / 'rebuild_report.md'} (MLflow run {run_id})")
    return EXIT_OK if report.matches else EXIT_FAILED


def erase_records(session: Session, args) -> int:
    import dagster as dg

    from finetune_loop.core.data.erasure import ErasureError, ErasureLedger
    from finetune_loop.core.ship.erasure import complete_erasures, request_erasure
    from finetune_loop.defs.monitor import erasure_retrain_sensor

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    spec, home, tracker = session.spec, session.home, session.tracker()
    try:
        outcome = request_erasure(spec, home, tracker, ids=args.ids, contains=args.contains, source=args.source, reason=args.reason)
    except ErasureError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    request = outcome.request
    found = ", ".join(f"{where} {count}" for where, count in outcome.found.items())
    print(f"erasure     request {request.request}: {sum(outcome.found.values())} records ({found}); ledger {spec.erasure_ledger_path}")
    print(f"versions    trained on them: {', '.join('v' + v for v in request.affected_versions) or 'none'} "
          "(tagged: never promoted or rolled back to again)")
    if outcome.suites_deleted:
        print(f"suites      deleted {', '.join(outcome.suites_deleted)} (held a record; the next run freezes a new version without it)")
    if outcome.champion_affected:
        print(f"champion    v{outcome.champion} trained on them: retraining now (trigger erasure)")
        with dg.DagsterInstance.get() as instance:
            run_trigger(session, session.definitions(), instance, erasure_retrain_sensor, {}, print)
    else:
        complete_erasures(spec, home, tracker)
    ledger = ErasureLedger.load(spec.erasure_ledger_path)
    completed = ledger.completed.get(request.request)
    if completed is None:
        print(f"open        request {request.request} stays open: the champion still serves a model trained on its records; "
              "erasure_retrain_sensor asks again, and champion_model closes it once a model without them ships")
        return EXIT_FAILED
    scan = completed["scan"]
    print(f"deleted     {len(completed['deleted'])} artifacts of {', '.join('v' + v for v in completed['affected_versions']) or 'no version'}")
    print(f"scan        {scan['files']} files ({scan['bytes'] / 2**20:.1f} MiB) of {home.root} searched for {scan['needles']} forms of the text: "
          f"{len(scan['files_holding_text'])} hold it{'; ' + scan['note'] if scan.get('note') else ''}")
    print(f"completed   request {request.request}; champion {('v' + completed['champion']) if completed['champion'] else 'none'}")
    return EXIT_OK


def run_loop(session: Session, args) -> int:
    import dagster as dg

    only_curation = args.command == "curate"
    spec, home = session.spec, session.home
    defs = session.definitions()
    started = time.perf_counter()
    print(f"finetune-loop: task {spec.name} ({spec.spec_path}), state in {home.root}", flush=True)
    with dg.DagsterInstance.get() as instance:
        # The implicit asset job observes the source assets (their data versions) and materializes
        # every asset, checks included, in one run.
        job = defs.resolve_implicit_global_asset_job_def()
        if only_curation:
            job = job.get_subset(asset_selection={dg.AssetKey(name) for name in CURATION_ASSETS})
        result = session.execute(job, instance, args.command, session.run_tags())
    outcome = RunOutcome.from_result(result)
    print(_summary(spec, home, result.run_id, outcome, (time.perf_counter() - started) / 60, only_curation))
    if outcome.eval_report is not None and not outcome.eval_report.gate_passed:
        return EXIT_GATE_REFUSED
    return EXIT_OK if result.success else EXIT_FAILED


def _user_message(error) -> str:
    """The message of the exception the user's input caused, without Dagster's wrapping (a step
    error carries the user code's exception as its cause) and without the module path."""
    while error.cause is not None and error.cls_name in ("DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError"):
        error = error.cause
    text = error.message.strip()
    qualified, separator, rest = text.partition(": ")
    return f"{qualified.rsplit('.', 1)[-1]}: {rest}" if separator and " " not in qualified else text


@dataclass(frozen=True)
class RunOutcome:
    """What a run materialized, read back through the metadata contract (None: not materialized)."""

    checks: dict[str, bool]
    curated: "CuratedDatasetMetadata | None" = None
    holdout: "SuiteMetadata | None" = None
    regression: "SuiteMetadata | None" = None
    recent: "RecentSuiteMetadata | None" = None
    eval_report: "EvalReportMetadata | None" = None
    export: "GgufExportMetadata | None" = None
    champion: "ChampionModelMetadata | None" = None
    drift: "DriftReportMetadata | None" = None

    @classmethod
    def from_result(cls, result) -> "RunOutcome":
        from finetune_loop.defs import metadata as contract

        readers = {
            "curated_dataset": ("curated", contract.CuratedDatasetMetadata), "holdout_suite": ("holdout", contract.SuiteMetadata),
            "regression_suite": ("regression", contract.SuiteMetadata), "recent_suite": ("recent", contract.RecentSuiteMetadata),
            "eval_report": ("eval_report", contract.EvalReportMetadata),
            "gguf_export": ("export", contract.GgufExportMetadata), "champion_model": ("champion", contract.ChampionModelMetadata),
            "drift_report": ("drift", contract.DriftReportMetadata),
        }
        found = {}
        for event in result.get_asset_materialization_events():
            asset = event.asset_key.to_user_string()
            if asset in readers:
                field, reader = readers[asset]
                found[field] = reader.from_dagster(event.step_materialization_data.materialization.metadata)
        checks = {evaluation.check_name: evaluation.passed for evaluation in result.get_asset_check_evaluations()}
        return cls(checks=checks, **found)


def _passed(checks: dict, name: str) -> str:
    return {True: "PASSED", False: "FAILED"}.get(checks.get(name), "not run")


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _accounting(data: "CuratedDatasetMetadata") -> str:
    """Where every row read went, one bucket each: the splits, the suites' own rows (reserved), the
    quarantine, exact and near duplicates, suite overlaps, revoked sources and erased records. The buckets add up to
    the rows read; a shortfall is printed, never hidden."""
    reserved = {"holdout": 0, "regression": 0, **data.suite_rows_reserved}
    buckets = [(data.train_rows, "train"), (data.validation_rows, "validation")]
    buckets += [(count, name) for name, count in reserved.items()]
    buckets += [
        (data.quarantined_rows, "quarantined"), (data.duplicates_removed + data.near_duplicates_removed, "duplicates"),
        (sum(data.contamination_removed.values()), "contaminated"), (sum(data.revoked_source_rows.values()), "revoked"),
        (data.erased_removed, "erased"),
    ]
    line = f"accounting  read {data.rows_read} rows = " + " + ".join(f"{count} {name}" for count, name in buckets)
    missing = data.rows_read - sum(count for count, _ in buckets)
    return line if missing == 0 else line + f"; {missing:+d} rows UNACCOUNTED"


def _recent_line(evaluation: "EvalReportMetadata", recent: "RecentSuiteMetadata | None") -> str:
    """The second comparison: labelled production requests no model trained on (see core/data/recent.py)."""
    if not evaluation.recent_rows:
        why = recent.window if recent is not None else "no recent suite"
        return f"not evaluated: no recent labelled requests ({why}); the holdout rule alone decided"
    versus = f"champion {_rate(evaluation.recent_champion_accuracy)}" if evaluation.champion_version else "no champion yet"
    return (f"candidate {_rate(evaluation.recent_candidate_accuracy)} vs {versus} on {evaluation.recent_rows} recent labelled requests "
            f"({recent.window if recent else 'recent suite'}; retrain trigger: {evaluation.trigger})")


def _summary(spec, home, run_id: str, run: RunOutcome, minutes: float, only_curation: bool) -> str:
    lines = ["", f"=== finetune-loop summary: {spec.name} (Dagster run {run_id}, {minutes:.1f} min) ==="]
    if run.curated is not None:
        data = run.curated
        lines += [
            f"data        {data.rows_read} rows read -> {data.train_rows} train + {data.validation_rows} validation (version {data.data_version})",
            f"            quarantined {data.quarantined_rows} {data.quarantine_reasons}; revoked sources {data.revoked_source_rows}; PII replaced {data.pii_replacements}",
            f"            duplicates removed: {data.duplicates_removed} exact, {data.near_duplicates_removed} near; rows reserved for suites "
            f"{data.suite_rows_reserved}; suite overlaps (contamination) removed {data.contamination_removed}; "
            f"no_contamination {_passed(run.checks, 'no_contamination')}; truncation rate {data.truncation_rate:.3f}",
        ]
    for name, suite in (("holdout_suite", run.holdout), ("regression_suite", run.regression)):
        if suite is not None:
            lines.append(f"            {name}: {suite.size} rows, content hash {suite.content_hash}")
    if only_curation:
        if run.curated is not None:
            lines.append(_accounting(run.curated))
            lines.append("dedup audit\n" + run.curated.dedup_audit)
        return "\n".join(lines)
    if run.eval_report is not None:
        evaluation = run.eval_report
        champion = "none yet" if evaluation.champion_version is None else f"v{evaluation.champion_version} ({_rate(evaluation.champion_accuracy)})"
        lines += [
            f"accuracy    base {evaluation.base_accuracy:.3f} -> tuned {evaluation.candidate_accuracy:.3f} on {evaluation.holdout_rows} frozen holdout rows"
            + (f"; champion {_rate(evaluation.champion_accuracy)}" if evaluation.champion_version else ""),
            "recent      " + _recent_line(evaluation, run.recent),
            f"layers      champion {champion}; regression pass rate {_rate(evaluation.candidate_regression_pass_rate)}; "
            f"probe pass rate {_rate(evaluation.candidate_probe_pass_rate)}; frontier {evaluation.frontier}",
            f"gate        {evaluation.gate}",
        ]
    else:
        lines.append("accuracy    not evaluated (a step before eval_report failed; see the Dagster run)")
    if run.export is not None:
        export = run.export
        lines += [
            f"gguf        v{export.model_version}: {export.gguf_path} ({export.quant_type}, {export.file_size_mb} MB); llama.cpp accuracy "
            f"{export.accuracy_gguf:.3f} (delta {export.accuracy_delta:+.3f} vs merged model); "
            f"{'ships' if export.shipped else 'NOT shipped, failed ' + export.failed_checks}",
            "            " + "; ".join(f"{name} {_passed(run.checks, name)}" for name in ("matches_merged_model", "quant_within_budget", "chat_template_roundtrip")),
            "            " + export.variants.replace("\n", "\n            "),
        ]
    else:
        lines.append("gguf        not exported in this run")
    if run.champion is not None:
        lines.append(f"champion    {run.champion.model_name} v{run.champion.version} (previous: {run.champion.previous_version or 'none'})")
    else:
        lines.append("champion    unchanged: not promoted in this run")
    if spec.production_log_path is None:
        lines.append("drift       not configured yet: the task names no data.production_log (monitoring starts when it does)")
    elif run.drift is not None:
        lines.append(
            f"drift       {'DRIFT' if run.drift.drift_detected else 'no drift'} (drifted column share {run.drift.drift_share:.2f}); report {run.drift.report_path}"
        )
    lines.append(f"mlflow      {home.mlflow_tracking_uri} (experiment {spec.name}); open with `make mlflow-ui`")
    lines.append(f"dagster     {os.environ['DAGSTER_HOME']}; open with `make ui`")
    return "\n".join(lines)


def simulate_traffic(session: Session, args) -> int:
    from finetune_loop.core.common.clock import utc_now
    from finetune_loop.core.common.tracker import CHAMPION_ALIAS
    from finetune_loop.core.monitor import simulate
    from finetune_loop.core.train.base_model import prepare_base_model
    from finetune_loop.core.train.trainer import recorded_base

    spec, home = session.spec, session.home
    try:
        tracker = session.tracker()
        champion = tracker.version_by_alias(spec.registered_model_name, CHAMPION_ALIAS)
        if champion is None:
            raise simulate.SimulationError(f"no champion for {spec.registered_model_name} yet; run `finetune-loop run --task {args.task}` first")
        settings = simulate.TrafficSettings(
            rows=args.rows, shift=args.shift, strength=args.strength, surge_label=args.surge_label,
            new_kind_path=args.new_kind_file, feedback_share=args.feedback_share, seed=args.seed,
        )
        adapter_dir = tracker.download_version(champion)
        # The champion answers on the base it was trained on (a rollback may restore one from before a migration).
        base = prepare_base_model((recorded_base(adapter_dir) or (spec.base_model,))[0], home.artifacts / "base_models")
        start = simulate.next_week_start(spec, now=utc_now())
        path = simulate.write_week(spec, settings, base.directory, adapter_dir, champion.version, start)
    except simulate.SimulationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"simulate-traffic: champion v{champion.version}, shift {args.shift} ({args.strength:.0%}): {simulate.summary(path)}")
    return EXIT_OK


@dataclass(frozen=True)
class RetrainOutcome:
    """One retrain a trigger requested and this process ran."""

    requested_by: str
    trigger: str
    evidence: str
    run_id: str
    succeeded: bool
    # None when the release gate did not run (an earlier step failed).
    gate_passed: bool | None
    gate_description: str


@dataclass(frozen=True)
class AutomationTick:
    """What one pass of the daemon's work did: the drift report (None when the task has no
    production log yet), the retrains it ran, and each trigger's reason for requesting nothing."""

    drift: "DriftReportMetadata | None"
    retrains: list[RetrainOutcome]
    skipped: dict[str, str]


def automation_tick(session: Session, defs, instance, cursors: dict[str, str], *, announce: bool = True) -> AutomationTick:
    """What the daemon does, once and in-process, at the loop's clock (`clock.utc_now()`):
    materialize drift_report and serving_quality (monitor_job), evaluate six_week_retrain_schedule,
    drift_retrain_sensor, feedback_retrain_sensor and erasure_retrain_sensor (sensor cursors read
    from and written back to `cursors`), and run every retrain_job they request with the request's
    tags and run key, one after another."""
    from finetune_loop.defs.metadata import DriftReportMetadata
    from finetune_loop.defs.monitor import drift_retrain_sensor, erasure_retrain_sensor, feedback_retrain_sensor, six_week_retrain_schedule

    say = print if announce else (lambda *a, **k: None)
    report = session.execute(defs.resolve_job_def("monitor_job"), instance, "monitor", session.run_tags(), announce=announce)
    if not report.success:
        raise MonitorError("drift_report failed; see the Dagster run " + report.run_id)
    materialized = report.asset_materializations_for_node("drift_report")
    drift = DriftReportMetadata.from_dagster(materialized[0].metadata) if materialized else None
    if drift is None:
        say(f"monitor: not configured yet: {session.spec.spec_path} names no data.production_log")
        return AutomationTick(None, [], {})
    say(f"drift       {'DRIFT' if drift.drift_detected else 'no drift'}: signals fired {drift.signals_fired}; "
        f"window {drift.window}; report {drift.report_path}")
    retrains: list[RetrainOutcome] = []
    skipped: dict[str, str] = {}
    for trigger in (six_week_retrain_schedule, drift_retrain_sensor, feedback_retrain_sensor, erasure_retrain_sensor):
        ran, skip = run_trigger(session, defs, instance, trigger, cursors, say)
        retrains += ran
        if skip is not None:
            skipped[trigger.name] = skip
    return AutomationTick(drift, retrains, skipped)


def run_trigger(session: Session, defs, instance, trigger, cursors: dict[str, str], say) -> tuple[list[RetrainOutcome], str | None]:
    """Evaluate one schedule or sensor at the loop's clock and run every retrain_job it requests;
    returns the retrains and, when it requested none, its reason."""
    import dagster as dg

    from finetune_loop.core.common.clock import utc_now
    from finetune_loop.defs.monitor import EVIDENCE_TAG
    from finetune_loop.defs.resources import TRIGGER_TAG

    if isinstance(trigger, dg.ScheduleDefinition):
        # The daemon evaluates a schedule once per cron tick, at the tick's time: a loop ticked
        # daily must not retrain on cadence on a Wednesday because Monday's schedule would have.
        # (Dagster's own cron arithmetic; it has no public name.)
        from dagster._utils.schedules import get_latest_completed_cron_tick

        due = get_latest_completed_cron_tick(trigger.cron_schedule, utc_now(), trigger.execution_timezone)
        tick_key = f"{trigger.name}{SCHEDULE_TICK_SUFFIX}"
        if cursors.get(tick_key) == due.isoformat():
            return [], f"evaluated at its last cron tick ({trigger.cron_schedule}) {due.isoformat()} already"
        cursors[tick_key] = due.isoformat()
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=due, resources=defs.resources)
    else:
        context = dg.build_sensor_context(instance=instance, cursor=cursors.get(trigger.name), definitions=defs, resources=defs.resources)
    with context:
        tick = trigger.evaluate_tick(context)
    if getattr(tick, "cursor", None) is not None:
        cursors[trigger.name] = tick.cursor
    retrains = []
    for request in tick.run_requests:
        # The daemon launches one run per run key; so does this.
        if instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": request.run_key}), limit=1):
            say(f"{trigger.name}: run key {request.run_key} already ran")
            continue
        origin = "dagster/schedule_name" if isinstance(trigger, dg.ScheduleDefinition) else "dagster/sensor_name"
        tags = {**request.tags, "dagster/run_key": request.run_key, origin: trigger.name}
        say(f"{trigger.name}: retrain requested, tags {json.dumps(request.tags)}", flush=True)
        result = session.execute(defs.resolve_job_def("retrain_job"), instance, "retrain", tags, announce=say is print)
        gate = next((e for e in result.get_asset_check_evaluations() if e.check_name == "release_gate"), None)
        verdict = "not run" if gate is None else "PASSED" if gate.passed else f"refused the candidate: {gate.description}"
        say(f"retrain     run {result.run_id}: {'succeeded' if result.success else 'failed'}; release_gate {verdict}")
        retrains.append(RetrainOutcome(
            trigger.name, request.tags[TRIGGER_TAG], request.tags.get(EVIDENCE_TAG, ""), result.run_id, result.success,
            None if gate is None else gate.passed, "" if gate is None else (gate.description or ""),
        ))
    if tick.run_requests:
        return retrains, None
    say(f"{trigger.name}: {tick.skip_message}")
    return retrains, tick.skip_message or ""


class MonitorError(RuntimeError):
    """The drift report, which every trigger but the schedule acts on, could not be made."""


def monitor(session: Session, args) -> int:
    """`automation_tick` once, with the sensor cursors kept in the state directory."""
    import dagster as dg

    defs = session.definitions()
    cursors_path = Path(os.environ["DAGSTER_HOME"]) / SENSOR_CURSORS_FILE
    cursors = json.loads(cursors_path.read_text()) if cursors_path.is_file() else {}
    with dg.DagsterInstance.get() as instance:
        try:
            tick = automation_tick(session, defs, instance, cursors)
        except MonitorError as exc:
            print(f"monitor: {exc}", file=sys.stderr)
            return EXIT_FAILED
    cursors_path.write_text(json.dumps(cursors))
    exit_code = EXIT_OK
    for retrain in tick.retrains:
        # A gate that refuses a candidate is the loop working (the champion keeps serving), told
        # apart from a broken step as `run` does; a broken step wins over a refusal.
        if retrain.gate_passed is False:
            exit_code = exit_code if exit_code == EXIT_FAILED else EXIT_GATE_REFUSED
        elif not retrain.succeeded:
            exit_code = EXIT_FAILED
    return exit_code


def show_portfolio(args) -> int:
    """Print every task's standing (a broken task file is a row with its error); exit 1 when a task
    file is broken or a champion serves below its gate."""
    from finetune_loop.core.common.clock import utc_now
    from finetune_loop.core.monitor import portfolio

    if args.home is not None:
        os.environ[HOME_ENV_VAR] = str(args.home.resolve())
    try:
        standings = portfolio.portfolio(args.tasks, LoopHome.from_env(), utc_now())
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(portfolio.portfolio_markdown(standings))
    if args.chart:
        print(f"chart: {portfolio.plot_portfolio(standings, args.chart)}")
    troubled = [s for s in standings if s.error or s.below_gate]
    for s in troubled:
        print(f"error: {s.task_file}: {s.error}" if s.error else f"warning: {s.name}: champion v{s.champion_version} below its gate", file=sys.stderr)
    return EXIT_FAILED if troubled else EXIT_OK


COMMANDS = {
    "run": run_loop,
    "curate": run_loop,
    "replace-suite": replace_suite,
    "rollback": rollback_champion,
    "rebuild": rebuild,
    "erase": erase_records,
    "simulate-traffic": simulate_traffic,
    "monitor": monitor,
}


if __name__ == "__main__":
    sys.exit(main())
