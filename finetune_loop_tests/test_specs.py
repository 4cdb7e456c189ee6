import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from finetune_loop.core.common.spec import DriftSettings, TaskSpecError, load_task_spec
from finetune_loop.defs.resources import EXAMPLE_TASK


def test_example_task_loads_with_its_data():
    spec = load_task_spec(EXAMPLE_TASK)
    assert spec.name == "support_triage"
    assert len(spec.labels) == 10
    assert spec.labeled_examples_path.is_file() and spec.production_log_path.is_file()
    assert spec.gate.min_accuracy == pytest.approx(0.70)
    assert "billing, refund" in spec.system_prompt()
    assert spec.export.quant_types == ("Q8_0", "Q4_K_M")
    assert (spec.export.budget_points("Q8_0"), spec.export.budget_points("Q4_K_M")) == (1.5, 2.0)


def _write(tmp_path: Path, **overrides) -> Path:
    raw = yaml.safe_load(EXAMPLE_TASK.read_text())
    raw["data"] = {"labeled_examples": "x.jsonl", "production_log": "y.jsonl"}
    raw.pop("probes", None)  # the example's probes file lies beside the example, not in tmp_path
    for key, value in overrides.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(raw))
    # The data file a task names must exist when it loads.
    (tmp_path / "x.jsonl").touch()
    return path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"labels": ["only_one"]}, "labels must be a list of at least two"),
        ({"labels": ["a", "b", "a"]}, "labels contain duplicates: ['a']"),
        ({"instruction": None}, "missing required field 'instruction'"),
        ({"lables": ["a", "b"]}, "unknown key(s) ['lables'] (did you mean 'lables' → 'labels'?)"),
        ({"gate": {"min_accuracy": 1.5}}, "gate.min_accuracy must be in [0, 1], got 1.5"),
        ({"gate": {"min_acuracy": 0.5}}, "unknown key(s) under gate: ['min_acuracy']"),
        ({"training": {"batch_size": "eight"}}, "training.batch_size must be an integer"),
        ({"export": {"quant_types": ["Q3_XXS"]}}, "export.quant_types must be a non-empty list"),
        ({"export": {"quant_types": ["Q8_0", "Q8_0"]}}, "export.quant_types must list distinct types, got ['Q8_0', 'Q8_0']"),
        ({"export": {"outtype": "q8"}}, "export.outtype must be one of ['auto', 'f32', 'f16', 'bf16'], got 'q8'"),
        ({"export": {"quant_budget_points": {"Q3_XXS": 1}}}, "unknown key(s) under export.quant_budget_points: ['Q3_XXS']; allowed: ['Q4_0', 'Q4_K_M', 'Q5_K_M', 'Q6_K', 'Q8_0']"),
        ({"export": {"quant_budget_points": {"Q8_0": -1}}}, "export.quant_budget_points.Q8_0 must be in [0, 100], got -1"),
        ({"export": {"quant_budget_points": [1]}}, "export.quant_budget_points must be a mapping"),
        ({"export": {"min_top1_agreement": 1.2}}, "export.min_top1_agreement must be in [0, 1], got 1.2"),
        ({"kind": "regression"}, "kind must be one of ['classification', 'generation'], got 'regression'"),
        ({"kind": "generation"}, "labels apply to kind 'classification' only"),
        ({"target_format": "json"}, "target_format applies to kind 'generation' only"),
        ({"kind": "generation", "labels": None, "target_format": "xml"}, "target_format must be one of ['text', 'json'], got 'xml'"),
        ({"fields": {"input": "text", "label": "label", "licence": 3}}, "fields.licence must be a string or null, got 3"),
        ({"fields": {"input": "text", "label": "label", "slices": "channel"}}, "fields.slices must be a list of strings"),
    ],
)
def test_bad_task_files_fail_with_a_specific_message(tmp_path, overrides, message):
    with pytest.raises(TaskSpecError) as error:
        load_task_spec(_write(tmp_path, **overrides))
    assert message in str(error.value)
    assert "task.yaml" in str(error.value)


def test_missing_and_malformed_files_are_errors(tmp_path):
    with pytest.raises(TaskSpecError, match="task file not found"):
        load_task_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(TaskSpecError, match="not valid YAML"):
        load_task_spec(bad)


def test_generation_tasks_and_hub_datasets_load(tmp_path):
    spec = load_task_spec(_write(tmp_path, kind="generation", labels=None, target_format="json",
                                 fields={"input": "email", "label": "extracted", "slices": ["language"]}))
    assert spec.kind == "generation"
    assert spec.labels == () and spec.target_format == "json" and spec.fields.slices == ("language",)
    raw = yaml.safe_load(_write(tmp_path).read_text())
    raw["data"]["labeled_examples"] = "hf:PolyAI/banking77#test"
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump(raw))
    hub = load_task_spec(tmp_path / "hub.yaml")
    assert hub.labeled_examples_hub_id == "PolyAI/banking77#test" and hub.labeled_examples_path is None
    assert hub.labeled_examples_location == "hf:PolyAI/banking77#test"


def test_a_snapshot_text_loads_as_the_file_it_was_taken_from(tmp_path):
    """A run reloads the spec text it started with: paths still resolve against the task file's directory."""
    path = _write(tmp_path)
    text = path.read_text()
    path.unlink()
    spec = load_task_spec(path, text=text.replace("lora_r: 16", "lora_r: 8"))
    assert spec.training.lora_r == 8 and spec.spec_path == path.resolve()
    assert spec.labeled_examples_path == (tmp_path / "x.jsonl").resolve()
    assert spec.spec_sha256 == hashlib.sha256(text.replace("lora_r: 16", "lora_r: 8").encode()).hexdigest()
    with pytest.raises(TaskSpecError, match="task.yaml: training.lora_r must be positive, got 0"):
        load_task_spec(path, text=text.replace("lora_r: 16", "lora_r: 0"))


def test_empty_sections_take_their_defaults_and_replace_revalidates(tmp_path):
    spec = load_task_spec(_write(tmp_path, drift={}, feedback=None))
    assert spec.drift == DriftSettings() and spec.feedback.min_new_labels == 200
    assert replace(spec.drift, window_days=3).window_days == 3.0
    with pytest.raises(ValueError, match="window_days"):
        replace(spec.drift, window_days=0)
