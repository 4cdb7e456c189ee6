"""The train stage: `base_model` (one local, trainable, content-hashed copy of the base model),
`prompts` (chat rendering of prompts and answers, shared by every later stage), `trainer` (LoRA
/ QLoRA training with TRL's SFTTrainer: plan, resumable run, MLflow tracking, registered
challenger), `shared_prefix` (the shared-instruction KV-cache trainer) and `install_lock` (the
locked install's hash and package set, which a run records and a rebuild compares). May import
`finetune_loop.core.data` and `finetune_loop.core.common`, never evaluate, ship, monitor or
dagster.
"""
