"""The monitor stage: `drift` (a window of production traffic against the training reference,
measured by Evidently), `triggers` (when to retrain: cadence, drift and feedback decisions as
pure functions that the Dagster sensors call), `serving_quality` (feedback accuracy per week
of the log against the gate line, with the registry's promotions and rollbacks) and `simulate` (simulated production traffic
answered by the current champion). The top layer of core: it may import every other stage
(ship, evaluate, train, data, common) but never `finetune_loop.defs`, the CLI or dagster.
"""
