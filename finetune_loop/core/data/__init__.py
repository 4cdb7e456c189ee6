"""The data stage: from labelled rows to a curated training set and frozen evaluation suites.
`readers` (row files of every format, the hub, `Example` JSONL), `validation` (field mapping,
quarantine reasons, sources), `pii` (scrubbing personal data), `exact_dedup` and `dedup` (exact
and MinHash near-duplicate removal with an audit), `splits` (seeded stratified splits),
`suites` (frozen holdout/regression suites), `probe_set` (the probes file),
`contamination` (what the evaluation asks, kept out of training), `curation` (the whole
curation run and its report) and `production_log` (the serving log and its feedback rows).
May import `finetune_loop.core.common` only, never train, evaluate, ship, monitor or dagster.
"""
