"""The loop's logic as plain Python, one stage package per step of the loop, free of Dagster.

Stages, top to bottom: `monitor` (drift, simulated traffic) -> `ship` (merge, GGUF export,
promotion) -> `evaluate` (frozen-suite evaluation, release gate, shadow) -> `train` (base model,
prompts, LoRA training) -> `data` (curation, frozen suites, production log) -> `common` (task
spec, examples, files, tracker). A stage may import the stages below it, never one above, and
only at module top level: no imports inside functions and no `if TYPE_CHECKING:` imports of
finetune_loop modules, so no cycle hides behind a lazy import. Nothing in core imports `dagster`
(or any `dagster_*` package) or `finetune_loop.defs`: the Dagster wiring in `finetune_loop.defs`
calls into core, never the other way round. The rules are the import-linter contracts in
pyproject.toml, checked by finetune_loop_tests/test_layers.py.
"""
