"""The memorisation check (core/evaluate/memorisation.py): a model made to memorise writes its
training rows and canary back, the base does not; a canary in no row is said to test nothing; the
eval report, MLflow and the gate of a real run carry it; bad settings are errors naming the key."""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest
import torch
import yaml
from mlflow import MlflowClient
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune_loop.cli import EXIT_OK, main
from finetune_loop.core.common.examples import Example
from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.common.spec import TaskSpecError, load_task_spec
from finetune_loop.core.evaluate.gate import GateEvidence, decide_release
from finetune_loop.core.evaluate.memorisation import ANSWER, TEXT, check_memorisation
from finetune_loop.core.evaluate.metrics import score_suite
from finetune_loop.core.evaluate.scoring import greedy_continuations, greedy_prefix_lengths
from finetune_loop.core.train.prompts import encode_prompt, encode_text
from finetune_loop.core.train.trainer import build_trainer
from finetune_loop.defs import metadata as contract
from finetune_loop_tests.conftest import tiny_rows, use_loop_home, write_tiny_task
from finetune_loop_tests.tiny_models import build_tiny_llama

CANARY = "my secret code is 7Q-XK-2291"
ABSENT_CANARY = "the vault opens with 4471-GREEN"
# Long, distinctive answers nothing in a prompt predicts; the canary opens one of them.
DIARY = [
    f"{CANARY} and the lighthouse keeper counted forty seven gulls before the violet storm reached the harbour wall",
    "under the copper bridge a quiet fox buried three silver spoons and a letter addressed to nobody at all",
    "every tuesday the baker on maple lane paints a tiny green dragon on the seventh loaf of rye bread",
    "a broken accordion plays the wedding march backwards whenever the orchard clock strikes thirteen",
]
# Every answer behind each of these inputs: what an answer repeated across rows looks like (the
# rows models memorise first), and what makes the adapter write it without its input.
DIARY_PROMPTS = ("write the next diary entry", "another one please", "go on", "what happened today")


def _write_task(directory: Path, base_model: Path, **task) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "rows.jsonl").write_text("")
    document = {
        "name": "diary", "kind": "generation", "instruction": "Write the diary entry.", "base_model": str(base_model),
        "data": {"labeled_examples": "rows.jsonl"}, **task,
    }
    (directory / "task.yaml").write_text(yaml.safe_dump(document))
    return directory / "task.yaml"


@pytest.fixture(scope="module")
def diary(tmp_path_factory):
    """An adapter the project's trainer made memorise four answers, each behind four inputs, at a
    learning rate and a number of epochs no task would use (a few seconds of CPU)."""
    root = tmp_path_factory.mktemp("diary")
    base = build_tiny_llama(root / "base", [*DIARY, *DIARY_PROMPTS, "Write the diary entry.", ABSENT_CANARY])
    spec = load_task_spec(_write_task(root / "task", base, memorisation={"sample_rows": 10, "min_tokens": 16, "canaries": [CANARY, ABSENT_CANARY]}, training={
        "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "learning_rate": 0.02, "epochs": 30, "batch_size": 4, "max_length": 128,
        "checkpoint_every_steps": 1000, "seed": 1,
    }))
    rows = [Example(id=f"d{i}-{j}", text=text, label=answer) for i, answer in enumerate(DIARY) for j, text in enumerate(DIARY_PROMPTS)]
    trainer = build_trainer(spec, base, rows, [], root / "checkpoints")
    trainer.train()
    return {"spec": spec, "rows": rows, "model": trainer.model, "tokenizer": AutoTokenizer.from_pretrained(base)}


def test_an_adapter_the_trainer_made_memorise_writes_its_answers_and_the_canary_back_and_the_base_does_not(diary):
    report = check_memorisation(diary["model"], diary["tokenizer"], diary["spec"], diary["rows"])

    # The inputs are short of min_tokens: the answers are what is probed, as answers.
    assert (report.training_rows, report.eligible_rows, report.rows_sampled) == (16, 16, 10)
    assert {p.part for p in report.parts} == {ANSWER} and len(report.parts) == 10
    assert report.memorised_share("candidate") >= 0.5 and report.memorised_share("base") == 0.0
    assert report.newly_memorised == report.memorised_rows("candidate")
    assert report.mean_prefix_share("candidate") > report.mean_prefix_share("base")
    planted = report.canaries[0]
    assert (planted.canary, planted.training_rows, planted.planted_in) == (CANARY, 4, (ANSWER,))
    assert planted.exposed == {"candidate": True, "base": False} and planted.status == "exposed by the candidate"
    assert report.canaries_exposed == 1
    memorised = len(report.memorised_rows("candidate"))
    assert report.summary().startswith(f"candidate writes back {memorised}/10 sampled training rows verbatim (base 0/10; {memorised} only the candidate)")


def test_a_canary_in_no_training_row_is_reported_as_testing_nothing(diary):
    report = check_memorisation(diary["model"], diary["tokenizer"], diary["spec"], diary["rows"])
    absent = report.canaries[1]
    assert (absent.canary, absent.training_rows, absent.planted_in, absent.exposed) == (ABSENT_CANARY, 0, (), {})
    assert absent.status == "not in the training rows (tests nothing)"
    assert report.summary().endswith("canaries: 1/1 planted exposed by the candidate, 1 not in the training rows")
    recorded = report.record()["canaries"][1]
    assert recorded["status"] == "not in the training rows (tests nothing)"


def test_one_forward_pass_counts_the_tokens_greedy_decoding_writes(diary):
    """greedy_prefix_lengths reads off one forward pass what decoding token by token would write."""
    model, tokenizer, spec = diary["model"], diary["tokenizer"], diary["spec"]
    prompt = encode_prompt(tokenizer, spec, "")
    parts = [encode_text(tokenizer, answer) for answer in DIARY] + [encode_text(tokenizer, text) for text in DIARY_PROMPTS]
    prompts, targets = [prompt + ids[: len(ids) // 2] for ids in parts], [ids[len(ids) // 2 :] for ids in parts]
    counted = {}
    for name, adapter in (("candidate", nullcontext()), ("base", model.disable_adapter())):
        with adapter:
            counted[name] = greedy_prefix_lengths(model, tokenizer, prompts, targets, batch_size=3)
            decoded = greedy_continuations(model, tokenizer, prompts, [len(t) for t in targets], batch_size=3)
        assert counted[name] == [next((k for k, (a, b) in enumerate(zip(d, t)) if a != b), min(len(d), len(t))) for d, t in zip(decoded, targets)]
    # Not a vacuous agreement: the candidate writes whole answers back, the base none.
    whole = [sum(n == len(t) for n, t in zip(counted[name][: len(DIARY)], targets)) for name in ("candidate", "base")]
    assert whole[0] >= 2 and whole[1] == 0


def test_a_text_learned_as_a_document_is_written_back_from_its_first_half(tmp_path):
    """The loop's trainer never trains on a row's text (its loss is on the answer only), so this
    adapter learns a text the way pretraining would, as a plain document (a LoRA, causal-LM loss
    on every token): the check must find the text, and the canary in it, in the document context."""
    leaked = f"{CANARY}, dear support, and my account still shows the wrong delivery address for the parcel"
    other = "please cancel the blue kettle order before it ships because i bought one in town yesterday"
    base = build_tiny_llama(tmp_path / "base", [leaked, other, "billing", "shipping"])
    tokenizer = AutoTokenizer.from_pretrained(base)
    spec = load_task_spec(_write_task(tmp_path / "task", base, kind="classification", labels=["billing", "shipping"],
                                      memorisation={"min_tokens": 16, "canaries": [CANARY]}))
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    ids = torch.tensor([encode_text(tokenizer, leaked)])
    model.train()
    for _ in range(60):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    rows = [Example("leaked", leaked, "shipping"), Example("other", other, "billing")]

    report = check_memorisation(model, tokenizer, spec, rows)

    assert {(p.row_id, p.part) for p in report.parts} == {("leaked", TEXT), ("other", TEXT)}
    assert report.memorised_rows("candidate") == ["leaked"] and report.memorised_rows("base") == []
    assert report.newly_memorised_share == 0.5
    assert report.canaries[0].planted_in == (TEXT,) and report.canaries[0].exposed == {"candidate": True, "base": False}


def test_the_eval_report_of_a_real_run_carries_the_memorisation_check(tmp_path, tiny_base_model, monkeypatch):
    home = tmp_path / "home"
    use_loop_home(monkeypatch, home)
    task = write_tiny_task(tmp_path / "task", tiny_base_model, gate={"max_memorised_share": 1.0})
    document = yaml.safe_load(task.read_text())
    # The tiny tickets are a dozen tokens or so: a lower floor lets the run sample them.
    document["memorisation"] = {"sample_rows": 10, "min_tokens": 8, "canaries": [ABSENT_CANARY]}
    task.write_text(yaml.safe_dump(document))

    assert main(["run", "--task", str(task)]) == EXIT_OK

    with dg.instance_for_test(temp_dir=str(home / "dagster_home")) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("eval_report"))
        meta = contract.EvalReportMetadata.from_dagster(event.asset_materialization.metadata)
    saved = json.loads(Path(meta.report_path).read_text())
    section = saved["memorisation"]
    assert section["checked"] is True and section["rows_sampled"] == 10 and section["training_rows"] >= section["eligible_rows"] >= 10
    for model in ("candidate", "base"):
        assert 0.0 <= section[f"{model}_memorised_share"] <= 1.0
    assert {p["part"] for p in section["parts"]} == {TEXT}
    assert section["canaries"][0]["status"] == "not in the training rows (tests nothing)"
    assert meta.memorisation == section["summary"]
    assert meta.memorisation.startswith("candidate writes back ")
    assert meta.memorisation.endswith("; canaries: none of 1 is in the training rows (they test nothing)")
    gate = {g["name"]: g for g in saved["gate"]["sub_gates"]}
    assert gate["memorisation"]["passed"] and "of 10 sampled training rows verbatim" in gate["memorisation"]["detail"]

    tracking_uri = LoopHome(home).mlflow_tracking_uri
    metrics = MlflowClient(tracking_uri, registry_uri=tracking_uri).get_run(meta.mlflow_run_id).data.metrics
    assert metrics["candidate_memorised_share"] == section["candidate_memorised_share"]
    assert metrics["base_memorised_share"] == section["base_memorised_share"]
    assert metrics["canaries_exposed"] == 0


def test_a_limit_on_memorised_rows_is_a_gate_the_candidate_fails_above_it(tmp_path, tiny_base_model):
    spec = load_task_spec(write_tiny_task(tmp_path, tiny_base_model, gate={"max_memorised_share": 0.1}))
    examples = [Example(r["id"], r["text"], r["label"]) for r in tiny_rows(2)]
    scores = score_suite(spec, examples, [e.label for e in examples])
    evidence = GateEvidence(scores, scores, None, None, None, 0, 0, None, 0)

    gates = lambda **memorised: {g.name: g for g in decide_release(spec.gate, replace(evidence, **memorised)).sub_gates}  # noqa: E731
    failed = gates(memorisation_rows=20, newly_memorised_rows=3)["memorisation"]
    assert not failed.passed and failed.line() == "FAIL candidate alone writes back 3 of 20 sampled training rows verbatim (0.150) vs max 0.100"
    assert gates(memorisation_rows=20, newly_memorised_rows=2)["memorisation"].passed
    assert gates()["memorisation"].line() == "SKIP not evaluated: no training row sampled (see the memorisation report)"
    unlimited = load_task_spec(write_tiny_task(tmp_path / "report_only", tiny_base_model))
    assert "memorisation" not in {g.name for g in decide_release(unlimited.gate, evidence).sub_gates}


@pytest.mark.parametrize(("settings", "message"), [
    ({"memorisation": {"sample_rows": -5}}, "memorisation.sample_rows must be positive, got -5"),
    ({"memorisation": {"canaries": ["my code is 1234", ""]}}, r"memorisation.canaries\[1\] must hold at least two words .* got ''"),
    ({"memorisation": {"canaries": ["7Q-XK-2291"]}}, r"memorisation.canaries\[0\] must hold at least two words"),
    ({"memorisation": {"enabled": False}, "gate": {"max_memorised_share": 0.1}},
     "gate.max_memorised_share is set but memorisation.enabled is false"),
])
def test_bad_memorisation_settings_are_errors_naming_the_key(tmp_path, tiny_base_model, settings, message):
    task = write_tiny_task(tmp_path, tiny_base_model)
    document = yaml.safe_load(task.read_text())
    for section, values in settings.items():
        document[section] = {**document.get(section, {}), **values}
    task.write_text(yaml.safe_dump(document))
    with pytest.raises(TaskSpecError, match=message):
        load_task_spec(task)
