"""The ship stage: `merge` (LoRA adapter folded into the fp32 base, checked), `gguf_writer` (HF
model to GGUF), `llama_runtime` (quantizing and running GGUF files under llama.cpp),
`gguf_checks` (the three verifications of an export), `modelfile` (Ollama Modelfiles),
`model_card` (the shipped README), `export_result` (what an export produced), `export` (the
export pipeline end to end) and `registry` (promotion and rollback of the `champion` alias).
May import `finetune_loop.core.evaluate`, `.train`, `.data` and `.common`, never monitor or
dagster.
"""
