"""The evaluate stage: `scoring` (how a model answers: label likelihood or greedy generation),
`metrics` (task metrics overall and per slice), `probes` (judging the behaviour probes),
`frontier` (an optional reference model behind an OpenAI-compatible endpoint), `gate` (the
release gate and its sub-gates), `report` (the evaluation of base, candidate and champion on the
frozen suites, with table and chart) and `shadow` (the challenger re-labelling recent production
traffic). May import `finetune_loop.core.train`, `.data` and `.common`, never ship, monitor or
dagster.
"""
