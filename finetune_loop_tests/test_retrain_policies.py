"""How a retrain uses what production taught it: feedback's share of capped training rows, and a
warm start from the champion's adapter (training.init: champion)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from finetune_loop.core.common.examples import Example
from finetune_loop.core.common.files import write_jsonl
from finetune_loop.core.common.spec import load_task_spec
from finetune_loop.core.data.production_log import FEEDBACK_SOURCE
from finetune_loop.core.data.validation import read_labeled_examples
from finetune_loop.core.train import trainer
from finetune_loop_tests.conftest import TINY_LABELS, write_tiny_task


def _spec(tmp_path: Path, base: Path, **training):
    path = write_tiny_task(tmp_path / "task", base)
    raw = yaml.safe_load(path.read_text())
    raw["training"].update(training)
    path.write_text(yaml.safe_dump(raw))
    return load_task_spec(path)


def _dataset(tmp_path: Path, curated: int, feedback: int) -> SimpleNamespace:
    rows = [Example(f"c{i}", f"old ticket {i}", TINY_LABELS[i % 3]) for i in range(curated)]
    rows += [Example(f"feedback-r{i}", f"new ticket {i}", TINY_LABELS[i % 3], source=FEEDBACK_SOURCE) for i in range(feedback)]
    write_jsonl(tmp_path / "train.jsonl", [vars(r) for r in rows])
    write_jsonl(tmp_path / "validation.jsonl", [])
    return SimpleNamespace(train_path=tmp_path / "train.jsonl", validation_path=tmp_path / "validation.jsonl")


@pytest.mark.parametrize(
    ("feedback_share", "feedback_rows", "expected_feedback"),
    [(0.5, 30, 30), (0.25, 30, 15), (0.0, 30, 0), (1.0, 90, 60)],
    ids=["all-feedback-fits", "feedback-capped-at-its-share", "share-zero", "feedback-fills-the-cap"],
)
def test_feedback_is_not_crowded_out_under_the_cap(tmp_path, tiny_base_model, feedback_share, feedback_rows, expected_feedback):
    spec = _spec(tmp_path, tiny_base_model, max_train_examples=60, feedback_share=feedback_share)
    rows, _ = trainer.select_training_rows(spec, _dataset(tmp_path, curated=600, feedback=feedback_rows))
    chosen_feedback = [r for r in rows if r.source == FEEDBACK_SOURCE]
    assert len(rows) == 60 and len(chosen_feedback) == expected_feedback
    # A proportional sample would have kept 60 * 30/630 ≈ 3 feedback rows; every label keeps rows.
    assert {r.label for r in rows if r.source != FEEDBACK_SOURCE} == set(TINY_LABELS) or expected_feedback == 60
    assert len({r.id for r in rows}) == 60


def test_no_cap_trains_on_every_row(tmp_path, tiny_base_model):
    spec = _spec(tmp_path, tiny_base_model)
    rows, _ = trainer.select_training_rows(spec, _dataset(tmp_path, curated=50, feedback=10))
    assert len(rows) == 60


def test_a_warm_start_continues_from_the_champions_weights(tmp_path, tiny_base_model):
    spec = _spec(tmp_path, tiny_base_model, learning_rate=0.01, checkpoint_every_steps=1000)
    rows, _ = read_labeled_examples(spec)
    first = trainer.build_trainer(spec, tiny_base_model, rows[:16], [], tmp_path / "first")
    first.args.max_steps, first.args.warmup_steps = 2, 0
    first.train()
    first.save_model(str(tmp_path / "champion"))
    champion = {n: p.detach().clone() for n, p in first.model.named_parameters() if p.requires_grad}

    warm = trainer.build_trainer(spec, tiny_base_model, rows[:16], [], tmp_path / "warm", init_adapter=tmp_path / "champion")
    warm_weights = {n: p.detach() for n, p in warm.model.named_parameters() if p.requires_grad}
    # The same trainable LoRA matrices, holding the champion's values (a fresh LoRA has lora_B = 0).
    assert set(warm_weights) == set(champion)
    assert all(torch.equal(warm_weights[n], champion[n]) for n in champion)
    assert any("lora_B" in n and warm_weights[n].abs().sum() > 0 for n in warm_weights)
    warm.args.max_steps, warm.args.warmup_steps = 1, 0
    warm.train()
    assert any(not torch.equal(p.detach(), champion[n]) for n, p in warm.model.named_parameters() if p.requires_grad)


def test_a_warm_start_from_an_adapter_of_another_rank_is_refused(tmp_path, tiny_base_model):
    spec = _spec(tmp_path, tiny_base_model)
    adapter = tmp_path / "champion"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 16, "lora_alpha": 32}))
    rows, _ = read_labeled_examples(spec)
    with pytest.raises(trainer.TrainingConfigError, match="champion adapter has lora_r 16 and lora_alpha 32 where the task asks 4 and 8"):
        trainer.build_trainer(spec, tiny_base_model, rows[:8], [], tmp_path / "out", init_adapter=adapter)
