"""From a LoRA adapter to files llama.cpp serves: merge, write GGUF, quantize, run under llama.cpp.

`write_gguf` is a small re-implementation of llama.cpp's `convert_hf_to_gguf.py` (that script is
not shipped on PyPI) for the llama family (Llama, SmolLM2, Mistral) and Qwen2: the same metadata
keys, tensor names, Q/K row permutation where the architecture needs it and byte-level BPE
vocabulary, written with the `gguf` package. `run_with_llama_cpp` runs an exported file the way
production does, so the numbers reported are those of the artifact that ships.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.common.tracker import ModelVersionRef, Tracker
from finetune_loop.core.data.readers import read_examples
from finetune_loop.core.evaluate.metrics import score_suite
from finetune_loop.core.ship import gguf_checks
from finetune_loop.core.ship.answering import answering_for
from finetune_loop.core.ship.export_result import GgufExport, GgufVariant
from finetune_loop.core.ship.gguf_writer import resolve_outtype, write_gguf
from finetune_loop.core.ship.llama_runtime import LLAMA_CPP_CONTEXT, quantize_gguf
from finetune_loop.core.ship.merge import merge_adapter, training_tokenizer_dir
from finetune_loop.core.ship.model_card import write_model_card
from finetune_loop.core.ship.modelfile import build_modelfile
from finetune_loop.core.ship.registry import (
    BUNDLE_ARTIFACT_PATH,
    GGUF_CHECKS_PASSED_TAG,
)
from finetune_loop.core.train.base_model import BaseModel
from finetune_loop.core.train.prompts import encode_segments, prompt_segments

# Holdout prompts run through base + adapter and the merged model to check the merge (all positions).
MERGE_CHECK_PROMPTS = 8


# Holdout prompts the chat template round trip renders three ways and generates from.
ROUNDTRIP_PROMPTS = 16


def export_and_verify(
    spec: "TaskSpec",
    base: "BaseModel",
    adapter_dir: Path,
    holdout_path: Path,
    out_dir: Path,
    tracker: "Tracker",
    *,
    eval_accuracies: dict[str, float],
    run_tags: dict[str, str] | None = None,
) -> GgufExport:
    """Merge (checked against base + adapter), write the unquantized GGUF, quantize every configured
    type, answer the frozen holdout with every file under llama.cpp (an answer as the task's kind
    defines it: `answering.py`), run the three checks, and ship
    an Ollama Modelfile per file and a model card. `eval_accuracies` (base/candidate from the
    evaluation) go into the model card. A failing check is reported in `checks`, not raised; nothing
    is published to the registry here (`publish_export` does that once the checks are known)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    settings = spec.export
    holdout = read_examples(holdout_path)
    texts = [e.text for e in holdout]
    out_dir = Path(out_dir)

    tokenizer = AutoTokenizer.from_pretrained(training_tokenizer_dir(adapter_dir, base.directory))
    prompts = [prompt_segments(tokenizer, spec, text) for text in texts]
    merged = merge_adapter(
        base.directory, adapter_dir, out_dir / "merged", tolerance=settings.merge_logit_tolerance,
        check_prompts=[encode_segments(tokenizer, prompt) for prompt in prompts[:MERGE_CHECK_PROMPTS]],
    )
    answering = answering_for(spec, tokenizer, holdout, prompts)
    # The reference every GGUF is judged against: the merged model in fp32, as HF runs it.
    merged_model = AutoModelForCausalLM.from_pretrained(merged.directory, dtype=torch.float32)
    reference = answering.reference(merged_model)
    merged_accuracy = score_suite(spec, holdout, reference.answers).primary
    del merged_model

    outtype, outtype_reason = resolve_outtype(settings.outtype)
    unquantized = write_gguf(
        merged.directory, out_dir / f"{spec.name}-{outtype}.gguf", outtype=outtype, tokenizer_pre=base.gguf_tokenizer_pre
    )
    paths = {outtype: unquantized}
    for quant_type in settings.quant_types:
        paths[quant_type] = quantize_gguf(unquantized, out_dir / f"{spec.name}-{quant_type}.gguf", quant_type)

    variants, answers = [], {}
    for name, path in paths.items():
        answers[name] = answering.under_llama_cpp(path)
        scores = score_suite(spec, holdout, answers[name].answers)
        modelfile = build_modelfile(tokenizer, path.name, spec.system_prompt()).write(path.with_suffix(".Modelfile"))
        variants.append(
            GgufVariant(
                name, path, path.stat().st_size, scores.primary, scores.primary - merged_accuracy,
                {label: stats.recall for label, stats in scores.per_label.items()},
                answers[name].prompt_tokens_per_second, answers[name].generation_tokens_per_second, modelfile,
            )
        )
    checks = [
        gguf_checks.matches_merged_model(
            reference.answers, reference.next_token_ids, answers[outtype].answers, answers[outtype].next_token_ids, settings
        ),
        gguf_checks.quant_within_budget(merged_accuracy, {v.name: v.accuracy for v in variants[1:]}, settings, len(holdout)),
        gguf_checks.chat_template_roundtrip(
            unquantized, tokenizer, spec, texts[:ROUNDTRIP_PROMPTS], variants[0].modelfile_path.read_text(),
            answer=holdout[0].label, n_ctx=LLAMA_CPP_CONTEXT,
        ),
    ]
    # The unquantized GGUF holds every merged weight; the HF copy is only an intermediate.
    shutil.rmtree(merged.directory)
    shipped = variants[1]
    seconds = time.perf_counter() - started

    with tracker.run(f"export-{spec.name}", tags={"stage": "export", **(run_tags or {})}) as run_id:
        tracker.log_params(
            run_id,
            {"outtype": outtype, "outtype_reason": outtype_reason, "quant_types": ",".join(settings.quant_types),
             "shipped_quant_type": shipped.name, "adapter_was_qlora": merged.adapter_was_qlora,
             "quant_budget_points": {q: settings.budget_points(q) for q in settings.quant_types}},
        )
        metrics = {
            "merged_accuracy": merged_accuracy,
            "merge_max_abs_logit_diff": merged.max_abs_logit_diff,
            "export_seconds": seconds,
            **{f"check_{c.name}_passed": float(c.passed) for c in checks},
            **{f"{c.name}.{k}": v for c in checks for k, v in c.metadata.items() if isinstance(v, (int, float))},
        }
        for variant in variants:
            metrics |= {
                f"accuracy_gguf_{variant.name}": variant.accuracy,
                f"accuracy_delta_{variant.name}": variant.accuracy_delta,
                f"size_mb_{variant.name}": variant.size_bytes / 2**20,
                f"prompt_tokens_per_second_{variant.name}": variant.prompt_tokens_per_second,
                f"generation_tokens_per_second_{variant.name}": variant.generation_tokens_per_second,
            }
        tracker.log_metrics(run_id, metrics)
        result = GgufExport(
            gguf_path=shipped.path, quant_type=shipped.name, file_size_bytes=shipped.size_bytes,
            unquantized_path=unquantized, outtype=outtype, outtype_reason=outtype_reason,
            accuracy_gguf=shipped.accuracy, accuracy_delta=shipped.accuracy_delta, merged_accuracy=merged_accuracy,
            merge_max_abs_logit_diff=merged.max_abs_logit_diff, adapter_was_qlora=merged.adapter_was_qlora,
            variants=variants, checks=checks, model_card_path=out_dir / "README.md", mlflow_run_id=run_id, seconds=seconds,
        )
        card = write_model_card(result.model_card_path, spec, base, adapter_dir, result, eval_accuracies)
        tracker.log_artifact(run_id, card, "gguf")
        for variant in variants:
            tracker.log_artifact(run_id, variant.modelfile_path, "gguf")
        tracker.log_text(run_id, json.dumps([c.__dict__ for c in checks], indent=2, default=str), "gguf/checks.json")
    return result


def publish_export(tracker: Tracker, version: ModelVersionRef, result: GgufExport) -> bool:
    """Record the export on the registered version it was made from; returns whether it ships.

    Every export tags the version with its outcome (`gguf_checks_passed`, which champion_model
    reads before it promotes). Only an export whose every check passed joins the version's
    rollback bundle (shipped GGUF, Modelfile, model card) and becomes its description: a file that
    failed a check is never what a rollback to this version would serve."""
    passed = all(check.passed for check in result.checks)
    tracker.tag_version(version.name, version.version, {
        "gguf_export_run_id": result.mlflow_run_id, "gguf_quant_type": result.quant_type,
        "gguf_accuracy": f"{result.accuracy_gguf:.4f}", GGUF_CHECKS_PASSED_TAG: passed,
        "gguf_failed_checks": ",".join(c.name for c in result.checks if not c.passed) or "none",
    })
    if passed:
        for path in result.shipped_files():
            tracker.log_artifact(version.run_id, path, BUNDLE_ARTIFACT_PATH)
        tracker.describe_version(version.name, version.version, result.model_card_path.read_text(encoding="utf-8"))
    return passed
