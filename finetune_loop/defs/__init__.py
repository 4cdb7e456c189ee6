"""Dagster wiring only, one module per stage of the loop; each module's `ASSETS` go into the group
named by its `GROUP` (`definitions.py`; per task on the platform), so the UI's groups, these files
and `finetune_loop/core/<stage>/` say the same thing:
`data`, `train`, `evaluate`, `ship`, `monitor`. Shared: `resources` (the task, the state directory,
the spec of the run, the base model and the tracker), `metadata` (the typed metadata contract every
reader uses) and `common` (run tags, MLflow links).

An asset here is thin: read the spec, call one core function, write its metadata dataclass. May
import `finetune_loop.core` and dagster; never imported by core.
"""
