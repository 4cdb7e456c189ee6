"""export_and_verify end to end on tiny random models, and the three gguf_export checks catching
deliberately broken exports (wrong Q/K layout, wrong EOS, no chat template, a Modelfile that
drops the system turn)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import pytest
import yaml
from transformers import AutoTokenizer

from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.common.spec import load_task_spec
from finetune_loop.core.common.tracker import Tracker
from finetune_loop.core.ship import gguf_checks, gguf_writer
from finetune_loop.core.ship.export import export_and_verify, publish_export
from finetune_loop.core.ship.gguf_writer import write_gguf
from finetune_loop.core.ship.modelfile import (
    build_modelfile,
    parse_modelfile,
    render_go_template,
)
from finetune_loop.core.train.base_model import BaseModel
from finetune_loop.core.train.prompts import chat_messages, render_prompt
from finetune_loop_tests.conftest import TINY_LABELS, tiny_rows, write_tiny_task
from finetune_loop_tests.test_export import _random_adapter
from finetune_loop_tests.tiny_models import build_tiny_model

TEXTS = [r["text"] for r in tiny_rows()] + [*TINY_LABELS, "Route the ticket. Labels:"]


def _setup(root: Path, architecture: str, hidden_size: int = 64):
    model_dir = build_tiny_model(root / "model", TEXTS, architecture=architecture, hidden_size=hidden_size)
    task = write_tiny_task(root / "task", model_dir)
    raw = yaml.safe_load(task.read_text())
    # A random model's label logits are near ties, so 4-bit rounding flips a few of the 24 holdout
    # rows (one row = 4.2 pt); Q8_0 keeps its default 0.5 pt budget, Q4_K_M gets room for that noise.
    raw["export"] = {"outtype": "auto", "quant_types": ["Q8_0", "Q4_K_M"], "quant_budget_points": {"Q4_K_M": 25.0}}
    task.write_text(yaml.safe_dump(raw))
    spec = load_task_spec(task)
    holdout = root / "holdout.jsonl"
    holdout.write_text("".join(json.dumps({"id": r["id"], "text": r["text"], "label": r["label"]}) + "\n" for r in tiny_rows(8, seed=5)))
    adapter = _random_adapter(model_dir, root / "adapter")
    home = LoopHome(root / "home")
    tracker = Tracker.for_task(home, spec.name)
    base = BaseModel(str(model_dir), model_dir, "0" * 64, None)
    return spec, base, adapter, holdout, tracker


def _export(root: Path, architecture: str, hidden_size: int = 64, register: bool = False):
    spec, base, adapter, holdout, tracker = _setup(root, architecture, hidden_size)
    result = export_and_verify(spec, base, adapter, holdout, root / "export", tracker, eval_accuracies={"base": 0.3, "candidate": 0.5})
    if register:
        with tracker.run("train") as run_id:
            tracker.log_artifacts(run_id, adapter, "adapter")
        ref = tracker.register_version(spec.registered_model_name, run_id, "adapter", tags={})
        assert publish_export(tracker, ref, result) is True
    return result, tracker, spec


@pytest.fixture(scope="module")
def llama_export(tmp_path_factory):
    # Width 256: every weight row is a whole k-quant block, so Q4_K_M really writes q4_K tensors.
    return _export(tmp_path_factory.mktemp("llama"), "llama", hidden_size=256, register=True)


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_every_check_passes_on_a_faithful_export(architecture, llama_export, tmp_path):
    result, _, _ = llama_export if architecture == "llama" else _export(tmp_path, architecture)
    outcomes = {c.name: c for c in result.checks}
    assert set(outcomes) == {"matches_merged_model", "quant_within_budget", "chat_template_roundtrip"}
    assert all(c.passed for c in outcomes.values()), "; ".join(c.description for c in result.checks)
    assert outcomes["matches_merged_model"].metadata["top1_agreement"] >= 0.99
    budget = outcomes["quant_within_budget"].metadata
    assert budget["Q8_0_budget_points"] == 0.5 and budget["Q4_K_M_budget_points"] == 25.0
    assert budget["Q4_K_M_delta_points"] == pytest.approx(100 * result.variants[2].accuracy_delta)
    assert outcomes["chat_template_roundtrip"].metadata["constrained_generation_stop_rate"] == 1.0
    assert outcomes["chat_template_roundtrip"].metadata["modelfile_template_mismatches"] == 0
    # "auto" keeps the fp32 merge bit for bit, and says why.
    assert result.outtype == "f32" and "fp32" in result.outtype_reason
    assert [v.name for v in result.variants] == ["f32", "Q8_0", "Q4_K_M"]
    sizes = [v.size_bytes for v in result.variants]
    assert sizes[0] > sizes[1] > sizes[2]
    for variant in result.variants:
        assert variant.path.read_bytes()[:4] == b"GGUF"
        assert variant.accuracy_delta == pytest.approx(variant.accuracy - result.merged_accuracy)
        assert variant.generation_tokens_per_second > 0 and variant.prompt_tokens_per_second > 0
        assert parse_modelfile(variant.modelfile_path.read_text()).gguf_name == variant.path.name
    assert result.gguf_path == result.variants[1].path and result.quant_type == "Q8_0"
    assert result.merge_max_abs_logit_diff < 1e-3


def test_q4_k_m_writes_k_quant_tensors_on_256_wide_rows(llama_export):
    result, _, _ = llama_export
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(result.variants[2].path).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q4_K


def test_model_card_and_mlflow_carry_the_export(llama_export):
    result, tracker, spec = llama_export
    card = result.model_card_path.read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert set(front) >= {"base_model", "license", "tags", "library_name"}
    for heading in ("## Task", "## Base model", "## Data provenance and licences", "## Training settings",
                    "## Evaluation", "## GGUF files and quantization deltas", "## Known failure modes"):
        assert heading in card
    assert "| candidate (HF, evaluation) | 0.500 |" in card
    assert result.variants_markdown() in card
    client = tracker.client
    run = client.get_run(result.mlflow_run_id)
    assert run.data.metrics["accuracy_gguf_Q4_K_M"] == pytest.approx(result.variants[2].accuracy)
    assert run.data.metrics["check_matches_merged_model_passed"] == 1.0
    assert run.data.params["outtype"] == "f32"
    logged = {a.path for a in client.list_artifacts(result.mlflow_run_id, "gguf")}
    assert {"gguf/README.md", "gguf/checks.json", "gguf/tiny_triage-Q8_0.Modelfile"} <= logged
    # The GGUF itself goes to the version's bundle (publish_export, once every check passed), not a
    # second copy in the export run.
    assert "gguf/tiny_triage-Q8_0.gguf" not in logged
    bundle = {a.path for a in client.list_artifacts(client.get_model_version(spec.registered_model_name, "1").run_id, "adapter")}
    assert {"adapter/tiny_triage-Q8_0.gguf", "adapter/tiny_triage-Q8_0.Modelfile", "adapter/README.md"} <= bundle
    version = client.get_model_version(spec.registered_model_name, "1")
    assert version.tags["gguf_export_run_id"] == result.mlflow_run_id
    assert version.tags["gguf_checks_passed"] == "True"
    assert version.description.startswith("---\nbase_model:")


def test_wrong_qk_permutation_fails_matches_merged_model(tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_writer, "_permute_for_rope", lambda weights, n_heads: weights)
    result, _, _ = _export(tmp_path, "llama")
    check = next(c for c in result.checks if c.name == "matches_merged_model")
    assert not check.passed
    assert check.metadata["top1_agreement"] < 0.9


def _roundtrip(gguf_path: Path, training_dir: Path, spec, modelfile_text: str | None = None):
    tokenizer = AutoTokenizer.from_pretrained(training_dir)
    modelfile_text = modelfile_text or build_modelfile(tokenizer, gguf_path.name, spec.system_prompt()).text()
    texts = [r["text"] for r in tiny_rows(1)]  # one ticket per label
    return gguf_checks.chat_template_roundtrip(gguf_path, tokenizer, spec, texts, modelfile_text, answer=spec.labels[0], n_ctx=512)


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("roundtrip")
    model_dir = build_tiny_model(root / "model", TEXTS)
    return model_dir, load_task_spec(write_tiny_task(root / "task", model_dir))


def test_roundtrip_passes_on_the_faithful_file(tiny_task, tmp_path):
    model_dir, spec = tiny_task
    outcome = _roundtrip(write_gguf(model_dir, tmp_path / "ok.gguf", outtype="f32"), model_dir, spec)
    assert outcome.passed, outcome.description


def test_wrong_eos_id_fails_chat_template_roundtrip(tiny_task, tmp_path):
    model_dir, spec = tiny_task
    # Exported from a tokenizer whose EOS is <|endoftext|>, while training ended answers with <|im_end|>.
    wrong = shutil.copytree(model_dir, tmp_path / "wrong-eos")
    config = json.loads((wrong / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|endoftext|>"
    (wrong / "tokenizer_config.json").write_text(json.dumps(config))
    outcome = _roundtrip(write_gguf(wrong, tmp_path / "wrong-eos.gguf", outtype="f32"), model_dir, spec)
    assert not outcome.passed
    assert "GGUF eos id 0 ('<|endoftext|>') != training EOS 2 ('<|im_end|>')" in outcome.description


def test_missing_chat_template_fails_chat_template_roundtrip(tiny_task, tmp_path, monkeypatch):
    model_dir, spec = tiny_task
    monkeypatch.setattr(gguf.GGUFWriter, "add_chat_template", lambda self, value: None)
    outcome = _roundtrip(write_gguf(model_dir, tmp_path / "no-template.gguf", outtype="f32"), model_dir, spec)
    assert not outcome.passed
    assert "no tokenizer.chat_template" in outcome.description


def test_modelfile_dropping_the_system_turn_fails_chat_template_roundtrip(tiny_task, tmp_path):
    model_dir, spec = tiny_task
    path = write_gguf(model_dir, tmp_path / "ok.gguf", outtype="f32")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = build_modelfile(tokenizer, path.name, spec.system_prompt()).text()
    broken = text.replace('{{ if eq .Role "system" }}', '{{ if eq .Role "nobody" }}')
    outcome = _roundtrip(path, model_dir, spec, broken)
    assert not outcome.passed
    assert outcome.metadata["modelfile_template_mismatches"] == 3
    assert "modelfile_template tokens differ from training on 3/3 prompts" in outcome.description


def test_go_template_renders_like_the_chat_template(tiny_task):
    model_dir, spec = tiny_task
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    modelfile = build_modelfile(tokenizer, "x.gguf", spec.system_prompt())
    messages = chat_messages(spec, "where is my parcel")
    assert render_go_template(modelfile.template, messages) == render_prompt(tokenizer, spec, "where is my parcel")
    assert modelfile.stops == ("<|im_end|>",)
    assert parse_modelfile(modelfile.text()) == modelfile


def test_quant_budget_gate_uses_task_budgets():
    from finetune_loop.core.common.spec import ExportSettings

    settings = ExportSettings(quant_budget_points={"Q4_K_M": 5.0})
    within = gguf_checks.quant_within_budget(0.80, {"Q8_0": 0.80, "Q4_K_M": 0.76}, settings, holdout_rows=1000)
    assert within.passed and within.metadata["Q4_K_M_delta_points"] == pytest.approx(-4.0)
    assert within.metadata["one_row_points"] == pytest.approx(0.1)
    over = gguf_checks.quant_within_budget(0.80, {"Q8_0": 0.79, "Q4_K_M": 0.80}, settings, holdout_rows=1000)
    assert not over.passed
    assert over.description == "over budget: Q8_0 -1.00 pt (budget -0.5 pt)"


def test_quant_budget_finer_than_one_holdout_row_is_judged_at_one_row():
    """On 120 rows one flipped answer is 0.83 pt: a 0.5-pt budget cannot tell it from no loss."""
    from finetune_loop.core.common.spec import ExportSettings

    settings = ExportSettings(quant_types=("Q8_0",))
    merged = 110 / 120
    one_flip = gguf_checks.quant_within_budget(merged, {"Q8_0": 109 / 120}, settings, holdout_rows=120)
    assert one_flip.passed, one_flip.description
    assert one_flip.metadata["Q8_0_budget_points"] == 0.5
    assert one_flip.metadata["Q8_0_effective_budget_points"] == pytest.approx(100 / 120)
    two_flips = gguf_checks.quant_within_budget(merged, {"Q8_0": 108 / 120}, settings, holdout_rows=120)
    assert not two_flips.passed
    assert two_flips.description == "over budget: Q8_0 -1.67 pt (budget -0.5 pt, judged at one holdout row: -0.83 pt)"


@pytest.mark.parametrize("target_format", ["text", "json"])
def test_a_generation_task_export_is_verified_on_its_greedy_answers(target_format, tmp_path):
    """A generation task ships through the same export: llama.cpp's greedy answers against the merged
    model's, exact match per file, the template round trip (a JSON task's answers constrained by a
    JSON grammar; free text has none to constrain it)."""
    model_dir = build_tiny_model(tmp_path / "model", TEXTS + ['{"order": 1, "problem": "broken"}'], architecture="llama")
    rows = [{"id": f"g{i}", "email": f"order {i} arrived broken", "target": {"order": i, "problem": "broken"}} for i in range(6)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "task.yaml").write_text(yaml.safe_dump({
        "name": "extract", "kind": "generation", "target_format": target_format, "base_model": str(model_dir),
        "instruction": "Extract the order and the problem.", "data": {"labeled_examples": "rows.jsonl"},
        "fields": {"input": "email", "label": "target"},
        "export": {"quant_types": ["Q8_0"], "quant_budget_points": {"Q8_0": 100.0}},
    }))
    spec = load_task_spec(tmp_path / "task.yaml")
    holdout = tmp_path / "holdout.jsonl"
    targets = [json.dumps(r["target"]) if target_format == "json" else f"order {r['target']['order']} broken" for r in rows]
    holdout.write_text("".join(json.dumps({"id": r["id"], "text": r["email"], "label": t}) + "\n" for r, t in zip(rows, targets)))
    adapter = _random_adapter(model_dir, tmp_path / "adapter")
    tracker = Tracker.for_task(LoopHome(tmp_path / "home"), spec.name)
    base = BaseModel(str(model_dir), model_dir, "0" * 64, None)

    result = export_and_verify(spec, base, adapter, holdout, tmp_path / "export", tracker, eval_accuracies={"base": 0.0, "candidate": 0.0})

    outcomes = {c.name: c for c in result.checks}
    merged = outcomes["matches_merged_model"]
    assert merged.passed, merged.description
    assert merged.metadata["prompts"] == 6 and merged.metadata["label_agreement"] >= 0.98
    assert "answer agreement" in merged.description
    assert [v.name for v in result.variants] == ["f32", "Q8_0"]
    # A random adapter writes none of the targets: exact match is measured, and measured as zero.
    assert result.merged_accuracy == 0.0 and all(v.accuracy == 0.0 and v.per_label_accuracy == {} for v in result.variants)
    card = result.model_card_path.read_text()
    assert "pipeline_tag: text-generation" in card and "| model | exact match |" in card and "per-label" not in card
    assert ("one JSON value" if target_format == "json" else "Answers with free text") in card
    roundtrip = outcomes["chat_template_roundtrip"].metadata
    assert roundtrip["modelfile_template_mismatches"] == 0 and 0.0 <= roundtrip["free_generation_stop_rate"] <= 1.0
    if target_format == "json":
        rate = roundtrip["constrained_generation_stop_rate"]
        # The grammar ends every answer once a JSON value is complete; a random model may not complete one in time.
        assert outcomes["chat_template_roundtrip"].passed is (rate == 1.0 and not json.loads(roundtrip["problems"]))
    else:
        assert "constrained_generation_stop_rate" not in roundtrip
        assert outcomes["chat_template_roundtrip"].passed, outcomes["chat_template_roundtrip"].description
