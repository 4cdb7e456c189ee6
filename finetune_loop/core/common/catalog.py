"""The tasks of a platform: every task file of one directory, loaded, by task name.

Dropping a valid task YAML into the directory adds a loop; a file that does not load is kept with
its error (the code location, the CLI and the portfolio say which file and why) and takes no other
task down. Two files naming the same task would share one registry model and MLflow experiment, so
both are refused with the other's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from finetune_loop.core.common.spec import TaskSpec, TaskSpecError, load_task_spec

TASK_FILE_SUFFIXES = (".yaml", ".yml")


def task_files(tasks_dir: Path) -> list[Path]:
    """The task files of a tasks directory, by name; a missing directory is an error naming it."""
    tasks_dir = Path(tasks_dir)
    if not tasks_dir.is_dir():
        raise FileNotFoundError(f"tasks directory {tasks_dir} does not exist")
    return sorted(p for p in tasks_dir.iterdir() if p.suffix.lower() in TASK_FILE_SUFFIXES and p.is_file())


@dataclass(frozen=True)
class TaskCatalog:
    tasks_dir: Path
    # task name -> its spec, in file order
    specs: dict[str, TaskSpec] = field(default_factory=dict)
    # task file -> why it is not served
    broken: dict[Path, str] = field(default_factory=dict)

    @classmethod
    def load(cls, tasks_dir: Path) -> "TaskCatalog":
        loaded: dict[Path, TaskSpec] = {}
        broken: dict[Path, str] = {}
        for path in task_files(tasks_dir):
            try:
                loaded[path] = load_task_spec(path)
            except TaskSpecError as exc:
                broken[path] = str(exc)
        by_name: dict[str, list[Path]] = {}
        for path, spec in loaded.items():
            by_name.setdefault(spec.name, []).append(path)
        specs = {}
        for name, paths in by_name.items():
            if len(paths) == 1:
                specs[name] = loaded[paths[0]]
                continue
            for path in paths:
                others = ", ".join(p.name for p in paths if p != path)
                broken[path] = f"{path}: task name {name!r} is also the name in {others}; each task needs its own name (its registry model and MLflow experiment)"
        return cls(Path(tasks_dir), specs, dict(sorted(broken.items())))

    def spec(self, name: str) -> TaskSpec:
        if name not in self.specs:
            known = ", ".join(sorted(self.specs)) or "none"
            raise TaskSpecError(f"no task named {name!r} in {self.tasks_dir} (tasks: {known})")
        return self.specs[name]
