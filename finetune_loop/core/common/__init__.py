"""What every stage shares: `spec` (the task spec, one YAML file per task, and its settings),
`examples` (the labelled `Example` and text normalisation), `files` (content hashes, JSONL
writing), `home` (where the embedded default keeps its state) and `tracker` (MLflow tracking and
model registry through an explicit client, the `champion`/`challenger` aliases). The bottom
layer of core: it imports no other finetune_loop module (third-party packages only, never
dagster).
"""
