"""Every bundled task on one platform, measured (issue #17): what running the platform costs here.

Loads the platform code location over a tasks directory (`build_platform_definitions`, as
`FINETUNE_LOOP_TASKS_DIR=... dagster dev` does), then, in a fresh state directory and Dagster
instance, runs for each task what its first day on the platform runs: `<task>__retrain_job`
(curate → train → gate → GGUF export and verification → promote) and `<task>__monitor_job`
(drift report and serving quality over its production log), one task after another as the `gpu`
pool of one lets training run; then `portfolio_report`. Per task: wall and CPU seconds of each job,
seconds per step (Dagster's step stats), the gate's verdict and the portfolio row; the machine and
its load before and after. Writes `--out`/platform_run.json and prints the portfolio table.

    PYTHONPATH=. python benchmarks/platform_run.py --out /tmp/platform                 # finetune_loop/tasks
    PYTHONPATH=. python benchmarks/platform_run.py --out /tmp/platform --tasks DIR
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _run_job(defs, instance, job_name: str) -> dict:
    import dagster as dg

    wall, cpu = time.perf_counter(), _cpu_seconds()
    result = defs.resolve_job_def(job_name).execute_in_process(instance=instance, raise_on_error=False)
    record = {
        "job": job_name, "success": result.success, "wall_s": round(time.perf_counter() - wall, 1),
        "cpu_s": round(_cpu_seconds() - cpu, 1),
        "steps_s": {
            s.step_key: round(s.end_time - s.start_time, 1) for s in instance.get_run_step_stats(result.run_id) if s.end_time and s.start_time
        },
    }
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    if failures:
        record["failed_steps"] = {e.step_key: (e.event_specific_data.error.message.strip().splitlines() or [""])[0] for e in failures}
    failed_checks = [
        f"{c.asset_key.to_user_string()}:{c.check_name}" for c in result.get_asset_check_evaluations() if not c.passed
    ]
    if failed_checks:
        record["failed_checks"] = failed_checks
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=Path, default=REPO / "finetune_loop" / "tasks", help="the platform's tasks directory")
    parser.add_argument("--out", type=Path, required=True, help="state directory and results (must not exist, or be empty)")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty: the measurement starts from a fresh state directory")
    home = args.out / "home"
    os.environ.update(FINETUNE_LOOP_HOME=str(home), DAGSTER_HOME=str(home / "dagster_home"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    (home / "dagster_home").mkdir(parents=True)

    import dagster as dg

    from finetune_loop.core.common.catalog import TaskCatalog
    from finetune_loop.core.common.home import LoopHome
    from finetune_loop.core.monitor.portfolio import portfolio, portfolio_markdown
    from finetune_loop.definitions import build_platform_definitions

    # Read before anything runs: the code measured is the checkout's at the start.
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    load_before = os.getloadavg()
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    defs = build_platform_definitions(args.tasks, str(home))
    catalog = TaskCatalog.load(args.tasks)
    tasks = []
    with dg.DagsterInstance.get() as instance:
        for name, spec in catalog.specs.items():
            print(f"platform_run: {name} ({spec.kind})", flush=True)
            jobs = [_run_job(defs, instance, f"{name}__{job}") for job in ("retrain_job", "monitor_job")]
            tasks.append({"task": name, "kind": spec.kind, "base_model": spec.base_model, "jobs": jobs})
            print(json.dumps(tasks[-1]), flush=True)
        report_job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey("portfolio_report")})
        report_ok = report_job.execute_in_process(instance=instance, raise_on_error=False).success
    standings = portfolio(args.tasks, LoopHome(home), datetime.now(timezone.utc))
    table = portfolio_markdown(standings)
    results = {
        "benchmark": "platform_run", "tasks_dir": str(args.tasks), "broken_task_files": {str(p): e for p, e in catalog.broken.items()},
        "commit": commit,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.perf_counter() - started, 1), "cpu_s": round(_cpu_seconds() - cpu_started, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "tasks": tasks, "portfolio_report_success": report_ok, "portfolio_table": table,
    }
    (args.out / "platform_run.json").write_text(json.dumps(results, indent=2))
    print(table)
    print(f"platform_run: {len(tasks)} tasks, {results['wall_s'] / 60:.1f} min wall, {results['cpu_s'] / 60:.1f} CPU min; "
          f"load {results['load_before']} -> {results['load_after']}; {args.out / 'platform_run.json'}")
    return 0 if all(job["success"] for task in tasks for job in task["jobs"]) and report_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
