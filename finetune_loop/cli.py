"""`finetune-loop`: run the whole loop for a task file through Dagster, on the embedded default.

    finetune-loop run --task finetune_loop/tasks/support_triage.yaml
    finetune-loop run --task my_task.yaml --home /data/finetune_loop
    finetune-loop simulate-traffic --task TASK --shift phone_keyboard --strength 0.6
    finetune-loop monitor --task TASK     # drift report, retrain triggers, and the retrain they request
    finetune-loop rollback --task TASK --reason "refund tickets misrouted"   # champion back to previous-champion

Exit status: 0 when the candidate passed the gate and shipped, 2 when the gate refused it, 1 when
a step failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_GATE_REFUSED = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="finetune-loop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="materialize every asset of the task once, in one Dagster run")
    run.add_argument("--task", required=True, type=Path, help="task YAML file (see finetune_loop/tasks/)")
    run.add_argument("--home", type=Path, help="state directory (default: FINETUNE_LOOP_HOME or .finetune_loop/)")
    curate = commands.add_parser("curate", help="run curation alone (the same Dagster assets) and print its summary")
    curate.add_argument("--task", required=True, type=Path, help="task YAML file")
    curate.add_argument("--home", type=Path, help="state directory (default: FINETUNE_LOOP_HOME or .finetune_loop/)")
    replace = commands.add_parser("replace-suite", help="archive a frozen suite so the next run freezes a new version")
    replace.add_argument("--task", required=True, type=Path, help="task YAML file")
    replace.add_argument("--suite", required=True, choices=["holdout", "regression"])
    replace.add_argument("--home", type=Path, help="state directory (default: FINETUNE_LOOP_HOME or .finetune_loop/)")
    rollback = commands.add_parser("rollback", help="move alias champion back to previous-champion in one step")
    rollback.add_argument("--task", required=True, type=Path, help="task YAML file")
    rollback.add_argument("--reason", default="not given", help="why (recorded as a model-version tag with the user)")
    rollback.add_argument("--home", type=Path, help="state directory (default: FINETUNE_LOOP_HOME or .finetune_loop/)")
    _add_monitoring_commands(commands)
    args = parser.parse_args(argv)
    if args.command == "rollback":
        return rollback_champion(args.task, args.reason, args.home)
    if args.command == "simulate-traffic":
        return simulate_traffic(args)
    if args.command == "monitor":
        return monitor(args.task, args.home)
    if args.command == "run":
        return run_loop(args.task, args.home)
    if args.command == "curate":
        return run_loop(args.task, args.home, only_curation=True)
    return replace_suite(args.task, args.suite, args.home)


CURATION_ASSETS = ("labeled_examples", "holdout_suite", "regression_suite", "curated_dataset")


def replace_suite(task_path: Path, suite: str, home_dir: Path | None = None) -> int:
    from finetune_loop.core.common.home import HOME_ENV_VAR, LoopHome
    from finetune_loop.core.common.spec import TaskSpecError, load_task_spec
    from finetune_loop.core.data.readers import CurationError
    from finetune_loop.core.data.suites import archive_suite

    try:
        spec = load_task_spec(task_path)
        if home_dir is not None:
            os.environ[HOME_ENV_VAR] = str(home_dir.resolve())
        archived = archive_suite(LoopHome.from_env().task_dir(spec.name, "suites"), suite)
    except (TaskSpecError, CurationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"archived the {suite} suite as {archived}; the next run freezes a new version")
    return EXIT_OK


def rollback_champion(task_path: Path, reason: str, home_dir: Path | None = None) -> int:
    from finetune_loop.core.common.spec import TaskSpecError
    from finetune_loop.core.common.tracker import CHAMPION_ALIAS, Tracker
    from finetune_loop.core.ship.registry import PromotionError, rollback

    try:
        spec, home = _enter_home(task_path, home_dir)
        tracker = Tracker(home.mlflow_tracking_uri, home.artifacts / "mlflow", spec.name)
        model_name = spec.registered_model_name
        before = tracker.version_by_alias(model_name, CHAMPION_ALIAS)
        after = rollback(tracker, home.task_dir(spec.name, "locks"), model_name, reason=reason)
    except (TaskSpecError, PromotionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"rollback: {model_name} champion v{before.version} -> v{after.champion} "
          f"(previous-champion now {'v' + after.previous_champion if after.previous_champion else 'none'}); reason: {reason}")
    return EXIT_OK


def run_loop(task_path: Path, home_dir: Path | None = None, *, only_curation: bool = False) -> int:
    from finetune_loop.core.common.home import HOME_ENV_VAR, LoopHome
    from finetune_loop.core.common.spec import TaskSpecError, load_task_spec

    try:
        spec = load_task_spec(task_path)
    except TaskSpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if home_dir is not None:
        os.environ[HOME_ENV_VAR] = str(home_dir.resolve())
    home = LoopHome.from_env()
    # The run is recorded in the same instance `make ui` shows.
    os.environ.setdefault("DAGSTER_HOME", str(home.dagster_home))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)

    import dagster as dg

    from finetune_loop.definitions import build_definitions

    defs = build_definitions(str(spec.spec_path), str(home.root))
    started = time.perf_counter()
    print(f"finetune-loop: task {spec.name} ({spec.spec_path}), state in {home.root}", flush=True)
    with dg.DagsterInstance.get() as instance:
        # The implicit asset job observes the source assets (their data versions) and materializes
        # every asset, checks included, in one run.
        job = defs.resolve_implicit_global_asset_job_def()
        if only_curation:
            job = job.get_subset(asset_selection={dg.AssetKey(name) for name in CURATION_ASSETS})
        result = job.execute_in_process(instance=instance, raise_on_error=False)
    minutes = (time.perf_counter() - started) / 60
    materialized = {
        event.asset_key.to_user_string(): event.step_materialization_data.materialization.metadata
        for event in result.get_asset_materialization_events()
    }
    checks = {evaluation.check_name: evaluation.passed for evaluation in result.get_asset_check_evaluations()}
    print(_summary(spec, home, result.run_id, materialized, checks, minutes, only_curation))
    if "eval_report" in materialized and not materialized["eval_report"]["gate_passed"].value:
        return EXIT_GATE_REFUSED
    return EXIT_OK if result.success else EXIT_FAILED


def _summary(spec, home, run_id: str, materialized: dict, checks: dict[str, bool], minutes: float, only_curation: bool) -> str:
    def value(asset: str, key: str, fmt: str = "{}") -> str:
        entry = materialized.get(asset, {}).get(key)
        return fmt.format(entry.value) if entry is not None else "n/a"

    lines = [f"", f"=== finetune-loop summary: {spec.name} (Dagster run {run_id}, {minutes:.1f} min) ==="]
    if "curated_dataset" in materialized:
        lines.append(
            f"data        {value('curated_dataset', 'rows_read')} rows read -> {value('curated_dataset', 'train_rows')} train + "
            f"{value('curated_dataset', 'validation_rows')} validation (version {value('curated_dataset', 'data_version')})"
        )
        lines.append(
            f"            quarantined {value('curated_dataset', 'quarantined_rows')} {value('curated_dataset', 'quarantine_reasons')}; "
            f"revoked sources {value('curated_dataset', 'revoked_source_rows')}; PII replaced {value('curated_dataset', 'pii_replacements')}"
        )
        lines.append(
            f"            duplicates removed: {value('curated_dataset', 'duplicates_removed')} exact, {value('curated_dataset', 'near_duplicates_removed')} near; "
            f"rows reserved for suites {value('curated_dataset', 'suite_rows_reserved')}; "
            f"suite overlaps (contamination) removed {value('curated_dataset', 'contamination_removed')}; "
            f"no_contamination {'PASSED' if checks.get('no_contamination') else 'FAILED'}; truncation rate {value('curated_dataset', 'truncation_rate', '{:.3f}')}"
        )
        for suite in ("holdout_suite", "regression_suite"):
            lines.append(f"            {suite}: {value(suite, 'size')} rows, content hash {value(suite, 'content_hash')}")
    if only_curation:
        if "curated_dataset" in materialized:
            lines.append("dedup audit\n" + materialized["curated_dataset"]["dedup_audit"].value)
        return "\n".join(lines)
    if "eval_report" in materialized:
        lines.append(
            f"accuracy    base {value('eval_report', 'base_accuracy', '{:.3f}')} -> tuned {value('eval_report', 'candidate_accuracy', '{:.3f}')} "
            f"on {value('eval_report', 'holdout_rows')} frozen holdout rows"
        )
        champion_version = value("eval_report", "champion_version")
        champion = "none yet" if champion_version == "none" else f"v{champion_version} ({value('eval_report', 'champion_accuracy', '{:.3f}')})"
        lines.append(
            f"layers      champion {champion}; "
            f"regression pass rate {value('eval_report', 'candidate_regression_pass_rate', '{:.3f}')}; "
            f"probe pass rate {value('eval_report', 'candidate_probe_pass_rate', '{:.3f}')}; frontier {value('eval_report', 'frontier')}"
        )
        lines.append(f"gate        {value('eval_report', 'gate')}")
    else:
        lines.append("accuracy    not evaluated (a step before eval_report failed; see the Dagster run)")
    if "champion_model" in materialized:
        lines.append(
            f"champion    {value('champion_model', 'model_name')} v{value('champion_model', 'version')} "
            f"(previous: {value('champion_model', 'previous_version')})"
        )
    else:
        lines.append("champion    unchanged: not promoted in this run")
    if "gguf_export" in materialized:
        lines.append(
            f"gguf        {value('gguf_export', 'gguf_path')} ({value('gguf_export', 'quant_type')}, {value('gguf_export', 'file_size_mb')} MB); "
            f"llama.cpp accuracy {value('gguf_export', 'accuracy_gguf', '{:.3f}')} (delta {value('gguf_export', 'accuracy_delta', '{:+.3f}')} vs merged model)"
        )
        gguf_checks = ("matches_merged_model", "quant_within_budget", "chat_template_roundtrip")
        lines.append("            " + "; ".join(f"{name} {'PASSED' if checks.get(name) else 'FAILED'}" for name in gguf_checks))
        lines.append("            " + materialized["gguf_export"]["variants"].value.replace("\n", "\n            "))
    else:
        lines.append("gguf        not exported in this run")
    if "drift_report" in materialized:
        detected = materialized["drift_report"]["drift_detected"].value
        lines.append(
            f"drift       {'DRIFT' if detected else 'no drift'} (drifted column share {value('drift_report', 'drift_share', '{:.2f}')}); "
            f"report {value('drift_report', 'report_path')}"
        )
    lines.append(f"mlflow      {home.mlflow_tracking_uri} (experiment {spec.name}); open with `make mlflow-ui`")
    lines.append(f"dagster     {os.environ['DAGSTER_HOME']}; open with `make ui`")
    return "\n".join(lines)


def _add_monitoring_commands(commands) -> None:
    from finetune_loop.core.monitor.simulate import SHIFTS

    simulate = commands.add_parser("simulate-traffic", help="append a week of production traffic answered by the current champion")
    simulate.add_argument("--task", required=True, type=Path, help="task YAML file; its data.production_log must be a directory")
    simulate.add_argument("--home", type=Path, help="state directory (default: FINETUNE_LOOP_HOME or .finetune_loop/)")
    simulate.add_argument("--rows", type=int, default=200, help="requests in the week")
    simulate.add_argument("--shift", choices=SHIFTS, default="none", help="how this week differs from the training data")
    simulate.add_argument("--strength", type=float, default=0.5, help="share of requests the shift touches")
    simulate.add_argument("--surge-label", help="label that surges under --shift mix (default: the task's last label)")
    simulate.add_argument("--new-kind-file", type=Path, help="JSONL of new requests (text, label) for --shift new_kind")
    simulate.add_argument("--feedback-share", type=float, default=0.3, help="share of requests a human labels")
    simulate.add_argument("--seed", type=int, default=0)
    watch = commands.add_parser("monitor", help="observe the log, report drift, evaluate the retrain sensors and run the retrain they request")
    watch.add_argument("--task", required=True, type=Path, help="task YAML file")
    watch.add_argument("--home", type=Path, help="state directory (default: FINETUNE_LOOP_HOME or .finetune_loop/)")


def _enter_home(task_path: Path, home_dir: Path | None):
    from finetune_loop.core.common.home import HOME_ENV_VAR, LoopHome
    from finetune_loop.core.common.spec import load_task_spec

    spec = load_task_spec(task_path)
    if home_dir is not None:
        os.environ[HOME_ENV_VAR] = str(home_dir.resolve())
    home = LoopHome.from_env()
    os.environ.setdefault("DAGSTER_HOME", str(home.dagster_home))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    return spec, home


def simulate_traffic(args) -> int:
    from datetime import datetime, timezone

    import mlflow.artifacts

    from finetune_loop.core.common.spec import TaskSpecError
    from finetune_loop.core.common.tracker import CHAMPION_ALIAS, Tracker
    from finetune_loop.core.monitor import simulate
    from finetune_loop.core.train import base_model

    try:
        spec, home = _enter_home(args.task, args.home)
        tracker = Tracker(home.mlflow_tracking_uri, home.artifacts / "mlflow", spec.name)
        champion = tracker.version_by_alias(spec.registered_model_name, CHAMPION_ALIAS)
        if champion is None:
            raise simulate.SimulationError(f"no champion for {spec.registered_model_name} yet; run `finetune-loop run --task {args.task}` first")
        settings = simulate.TrafficSettings(
            rows=args.rows, shift=args.shift, strength=args.strength, surge_label=args.surge_label,
            new_kind_path=args.new_kind_file, feedback_share=args.feedback_share, seed=args.seed,
        )
        adapter_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=champion.source, tracking_uri=home.mlflow_tracking_uri))
        base = base_model.prepare_base_model(spec.base_model, home.artifacts / "base_models")
        start = simulate.next_week_start(spec, default=datetime.now(timezone.utc))
        path = simulate.write_week(spec, settings, base.directory, adapter_dir, champion.version, start)
    except (TaskSpecError, simulate.SimulationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"simulate-traffic: champion v{champion.version}, shift {args.shift} ({args.strength:.0%}): {simulate.summary(path)}")
    return EXIT_OK


SENSOR_CURSORS_FILE = "monitor_sensor_cursors.json"


def monitor(task_path: Path, home_dir: Path | None = None) -> int:
    """What the daemon does on a schedule, once and in-process: materialize drift_report (monitor_job),
    evaluate drift_retrain_sensor and feedback_retrain_sensor (their cursors kept in the state
    directory), and run every retrain_job they request with the request's tags and run key."""
    import json

    import dagster as dg

    from finetune_loop.core.common.spec import TaskSpecError
    from finetune_loop.definitions import build_definitions
    from finetune_loop.defs.automation import (
        drift_retrain_sensor,
        feedback_retrain_sensor,
    )

    try:
        spec, home = _enter_home(task_path, home_dir)
    except TaskSpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    defs = build_definitions(str(spec.spec_path), str(home.root))
    cursors_path = Path(os.environ["DAGSTER_HOME"]) / SENSOR_CURSORS_FILE
    cursors = json.loads(cursors_path.read_text()) if cursors_path.is_file() else {}
    exit_code = EXIT_OK
    with dg.DagsterInstance.get() as instance:
        report = defs.resolve_job_def("monitor_job").execute_in_process(instance=instance, raise_on_error=False)
        if not report.success:
            print("monitor: drift_report failed; see the Dagster run " + report.run_id, file=sys.stderr)
            return EXIT_FAILED
        meta = report.asset_materializations_for_node("drift_report")[0].metadata
        print(f"drift       {'DRIFT' if meta['drift_detected'].value else 'no drift'}: signals fired {meta['signals_fired'].value}; "
              f"window {meta['window'].value}; report {meta['report_path'].value}")
        for sensor in (drift_retrain_sensor, feedback_retrain_sensor):
            with dg.build_sensor_context(instance=instance, cursor=cursors.get(sensor.name), definitions=defs, resources=defs.resources) as context:
                tick = sensor.evaluate_tick(context)
            if tick.cursor is not None:
                cursors[sensor.name] = tick.cursor
            for request in tick.run_requests:
                # The daemon launches one run per run key; so does this.
                if instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": request.run_key}), limit=1):
                    print(f"{sensor.name}: run key {request.run_key} already ran")
                    continue
                tags = {**request.tags, "dagster/run_key": request.run_key, "dagster/sensor_name": sensor.name}
                print(f"{sensor.name}: retrain requested, tags {json.dumps(request.tags)}", flush=True)
                result = defs.resolve_job_def("retrain_job").execute_in_process(instance=instance, tags=tags, raise_on_error=False)
                gate = next((e for e in result.get_asset_check_evaluations() if e.check_name == "release_gate"), None)
                verdict = "not run" if gate is None else "PASSED" if gate.passed else f"refused the candidate: {gate.description}"
                print(f"retrain     run {result.run_id}: {'succeeded' if result.success else 'failed'}; release_gate {verdict}")
                # A gate that refuses a candidate is the loop working (the champion keeps serving),
                # told apart from a broken step as `run` does; a broken step wins over a refusal.
                if gate is not None and not gate.passed:
                    exit_code = exit_code if exit_code == EXIT_FAILED else EXIT_GATE_REFUSED
                elif not result.success:
                    exit_code = EXIT_FAILED
            if not tick.run_requests:
                print(f"{sensor.name}: {tick.skip_message}")
    cursors_path.write_text(json.dumps(cursors))
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
