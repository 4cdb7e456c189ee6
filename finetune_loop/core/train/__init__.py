"""The train stage: `base_model` (one local, trainable, content-hashed copy of the base model),
`prompts` (chat rendering of prompts and answers, shared by every later stage), `trainer` (LoRA
/ QLoRA training with TRL's SFTTrainer: plan, resumable run, MLflow tracking, registered
challenger) and `shared_prefix` (the shared-instruction KV-cache trainer). May import
`finetune_loop.core.data` and `finetune_loop.core.common`, never evaluate, ship, monitor or
dagster.
"""
