"""The declared task schema: README's key table, the JSON Schema, and the task files it must accept.

Regenerate README's table after changing a declaration in core/common/spec.py:
    .venv/bin/python -m finetune_loop_tests.test_schema
"""

import importlib.util
from pathlib import Path

import pytest
import yaml

from finetune_loop.core.common.spec import TaskSpecError, load_task_spec, task_spec_json_schema, task_spec_key_table
from finetune_loop.defs.resources import EXAMPLE_TASK
from finetune_loop_tests.conftest import write_tiny_task

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- task-keys:start -->", "<!-- task-keys:end -->"
REGENERATE = "run `.venv/bin/python -m finetune_loop_tests.test_schema` to regenerate it"
HAS_JSONSCHEMA = importlib.util.find_spec("jsonschema") is not None


def _readme_block(text: str) -> tuple[int, int]:
    start, end = text.find(START), text.find(END)
    assert 0 <= start < end, f"README.md has no {START} … {END} block for the task key table; add it and {REGENERATE}"
    return start + len(START), end


def regenerate_readme() -> None:
    text = README.read_text()
    start, end = _readme_block(text)
    README.write_text(text[:start] + "\n" + task_spec_key_table() + text[end:])


def test_readme_key_table_is_generated_from_the_schema():
    text = README.read_text()
    start, end = _readme_block(text)
    assert text[start:end].strip() == task_spec_key_table().strip(), f"README.md's task key table is out of date: {REGENERATE}"


def _resolve(schema: dict, node: dict) -> dict:
    ref = node.get("$ref")
    return schema["$defs"][ref.rsplit("/", 1)[-1]] if ref else node


def _schema_keys(schema: dict) -> set[str]:
    """Dotted keys the schema declares: `name`, `training.lora_r` …"""
    keys = set()
    for key, node in schema["properties"].items():
        section = _resolve(schema, node)
        keys |= {f"{key}.{sub}" for sub in section["properties"]} if "properties" in section else {key}
    return keys


def _file_keys(raw: dict) -> set[str]:
    return {f"{key}.{sub}" for key, value in raw.items() if isinstance(value, dict) for sub in value} | {
        key for key, value in raw.items() if not isinstance(value, dict)
    }


@pytest.fixture
def task_files(tmp_path, tiny_base_model) -> list[Path]:
    return [EXAMPLE_TASK, write_tiny_task(tmp_path / "tiny", tiny_base_model)]


def test_bundled_and_tiny_tasks_satisfy_the_json_schema(task_files):
    schema = task_spec_json_schema()
    assert schema["$schema"].endswith("2020-12/schema") and schema["additionalProperties"] is False
    for path in task_files:
        raw = yaml.safe_load(path.read_text())
        load_task_spec(path)
        assert _file_keys(raw) <= _schema_keys(schema), f"{path.name}: keys the schema does not declare"
        if HAS_JSONSCHEMA:
            import jsonschema

            jsonschema.Draft202012Validator(schema).validate(raw)
    # Every section and key of the key table is in the schema, and the other way round.
    table_keys = {line.split("`")[1] for line in task_spec_key_table().splitlines()[2:]}
    assert table_keys == _schema_keys(schema)
    assert {"fields", "split", "training", "gate", "export", "drift", "feedback", "shadow", "curation", "data"} <= {
        key.split(".")[0] for key in table_keys
    }


def test_schema_records_bounds_defaults_choices_and_help():
    schema = task_spec_json_schema()
    training = _resolve(schema, schema["properties"]["training"])["properties"]
    assert training["lora_r"]["minimum"] == 1 and training["lora_r"]["default"] == 16
    assert training["lora_r"]["type"] == "integer" and training["lora_r"]["description"]
    assert training["lora_dropout"]["minimum"] == 0 and training["lora_dropout"]["exclusiveMaximum"] == 1
    gate = _resolve(schema, schema["properties"]["gate"])["properties"]
    assert (gate["min_accuracy"]["minimum"], gate["min_accuracy"]["maximum"]) == (0, 1)
    export = _resolve(schema, schema["properties"]["export"])["properties"]
    assert export["outtype"]["enum"] == ["auto", "f32", "f16", "bf16"]
    assert export["quant_budget_points"]["propertyNames"]["enum"][0] == "Q8_0"
    assert schema["properties"]["kind"]["enum"] == ["classification", "generation"]
    assert set(schema["required"]) == {"name", "instruction", "data"}
    row = next(line for line in task_spec_key_table().splitlines() if line.startswith("| `training.lora_r` |"))
    assert row == "| `training.lora_r` | integer | `16` | ≥ 1 | LoRA rank |"


def test_schema_and_loader_reject_the_same_out_of_range_value(tmp_path):
    raw = yaml.safe_load(EXAMPLE_TASK.read_text())
    raw["training"]["lora_r"] = 0
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(TaskSpecError, match="task.yaml: training.lora_r must be positive, got 0"):
        load_task_spec(path)
    if HAS_JSONSCHEMA:
        import jsonschema

        with pytest.raises(jsonschema.ValidationError, match="less than the minimum of 1"):
            jsonschema.Draft202012Validator(task_spec_json_schema()).validate(raw)


if __name__ == "__main__":
    regenerate_readme()
    print(f"{README}: task key table regenerated")


def test_schema_command_prints_the_json_schema_editors_validate_with(capsys):
    import json

    from finetune_loop.cli import EXIT_OK, main

    assert main(["schema"]) == EXIT_OK
    printed = json.loads(capsys.readouterr().out)
    assert printed == task_spec_json_schema()
    assert printed["$schema"].startswith("https://json-schema.org/")
