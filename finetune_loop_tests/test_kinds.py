"""The task kind is one seam (core/common/kinds.py): every stage's table covers every kind, no
module outside the seam branches on a kind's name, and each kind's answer rules hold."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from finetune_loop.core.common import kinds
from finetune_loop.core.common.examples import Example
from finetune_loop.core.common.spec import TASK_KINDS, load_task_spec
from finetune_loop.core.data.pii import ANSWER_SCRUBBERS
from finetune_loop.core.data.validation import ANSWER_RULES
from finetune_loop.core.evaluate.metrics import SCORERS, score_suite
from finetune_loop.core.evaluate.scoring import ANSWERERS
from finetune_loop.core.ship.answering import EXPORT_ANSWERING
from finetune_loop.core.ship.gguf_checks import ANSWER_GRAMMARS
from finetune_loop_tests.conftest import write_tiny_task
from finetune_loop_tests.test_generation_pipeline import _write_task as write_generation_task

PACKAGE = Path(kinds.__file__).resolve().parents[2]
STAGE_TABLES = {
    "validation.ANSWER_RULES": ANSWER_RULES, "pii.ANSWER_SCRUBBERS": ANSWER_SCRUBBERS, "scoring.ANSWERERS": ANSWERERS,
    "metrics.SCORERS": SCORERS, "answering.EXPORT_ANSWERING": EXPORT_ANSWERING, "gguf_checks.ANSWER_GRAMMARS": ANSWER_GRAMMARS,
}


def test_every_stage_table_covers_every_kind_the_task_file_accepts():
    assert set(kinds.KINDS) == set(TASK_KINDS)
    for name, table in STAGE_TABLES.items():
        assert set(table) == set(kinds.KINDS), f"{name} covers {sorted(table)}, the kinds are {sorted(kinds.KINDS)}"


def test_no_module_outside_the_seam_branches_on_a_kind_name():
    # A kind's name appears only in the seam, in the task file's schema and as a key of a stage table.
    allowed = {PACKAGE / "core/common/kinds.py", PACKAGE / "core/common/spec.py"}
    branching = re.compile(r"""(==|!=|\bin\b|\bis\b)\s*\(?\s*["'](classification|generation)["']|["'](classification|generation)["']\s*(==|!=)""")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path in allowed:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if branching.search(line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offenders == []


@pytest.fixture
def specs(tmp_path, tiny_base_model):
    return {
        "classification": load_task_spec(write_tiny_task(tmp_path / "triage", tiny_base_model)),
        "json": load_task_spec(write_generation_task(tmp_path / "json", tiny_base_model, "json")),
        "text": load_task_spec(write_generation_task(tmp_path / "text", tiny_base_model, "text")),
    }


def test_classification_answers_are_labels_and_generation_answers_are_free(specs):
    label_kind, json_kind, text_kind = (kinds.kind_of(specs[k]) for k in ("classification", "json", "text"))
    labels = specs["classification"].labels
    assert (label_kind.metric_name, json_kind.metric_name) == ("accuracy", "exact_match")
    # A frontier model's "Billing." is the label billing; a generation answer stays as written.
    assert label_kind.canonical_answer(f" {labels[0].upper()}.".strip()) == labels[0]
    assert json_kind.canonical_answer("Billing.") == "Billing."
    assert not label_kind.same_answer(labels[0], labels[0].upper()) and text_kind.same_answer("Order 12.", "order 12")
    assert label_kind.format_check(labels[0]) == (True, "exactly one label")
    assert json_kind.format_check('{"a": 1') == (False, "not valid JSON") and text_kind.format_check("  ") == (False, "empty answer")
    # Refusal probes: a label task must answer with a label; a generation task is judged only where the base refused.
    refuses = lambda text: "cannot" in text  # noqa: E731
    assert label_kind.judge_free_answer("I cannot", None, "I cannot", refuses) == (False, "answered outside the label set")
    assert json_kind.judge_free_answer("{}", None, "sure", refuses) == (None, "base did not refuse: not applicable")
    assert json_kind.judge_free_answer("I cannot help", None, "I cannot", refuses) == (True, "base refused; refused")
    assert label_kind.allows_expected_label(labels[0]) and not json_kind.allows_expected_label(labels[0])
    rows = [Example("a", "x", labels[0]), Example("b", "y", "retired")]
    stale_ids, why = label_kind.stale_suite_rows(rows)
    assert stale_ids == ["b"] and "['retired']" in why and json_kind.stale_suite_rows(rows) is None
    count = len  # one token per character
    assert label_kind.answer_budget(count, rows) == 0 and json_kind.answer_budget(count, rows) == len("retired") + json_kind.extra_answer_tokens
    assert label_kind.grammar_answer_tokens(count, "") == max(map(len, labels)) and json_kind.grammar_answer_tokens(count, "abc") == 6


def test_the_stage_tables_do_what_each_kind_says(specs):
    counts = Counter()
    # PII: a label is never rewritten; a JSON target's string values are, and the JSON stays valid.
    assert ANSWER_SCRUBBERS["classification"](specs["classification"], "mail me at a@b.example", counts) == "mail me at a@b.example"
    scrubbed = ANSWER_SCRUBBERS["generation"](specs["json"], '{"contact":"a@b.example","qty":2}', counts)
    assert "a@b.example" not in scrubbed and '"qty":2' in scrubbed and counts
    # Validation: an unknown label is refused with the nearest one; a JSON target is re-serialised compactly.
    labels = specs["classification"].labels
    answer, problem = ANSWER_RULES["classification"](specs["classification"], labels[0].upper(), "label")
    assert answer is None and problem.startswith("unknown label") and repr(labels[0]) in problem
    assert ANSWER_RULES["generation"](specs["json"], '{ "a" : 1 }', "target") == ('{"a":1}', None)
    # Scoring: accuracy over labels; exact match and JSON validity over targets.
    rows = [Example("a", "x", labels[0]), Example("b", "y", labels[1])]
    assert score_suite(specs["classification"], rows, [labels[0], labels[0]]).primary == 0.5
    targets = [Example("a", "x", '{"a":1}'), Example("b", "y", '{"a":2}')]
    generated = score_suite(specs["json"], targets, ['{"a":1}', "not json"])
    assert (generated.primary_name, generated.primary, generated.metrics["json_valid"]) == ("exact_match", 0.5, 0.5)
    # Export grammar: one alternative per label; any JSON value for JSON targets; none for free text.
    assert ANSWER_GRAMMARS["classification"](specs["classification"]) == "root ::= " + " | ".join(f'"{label}"' for label in labels)
    assert "root   ::= value" in ANSWER_GRAMMARS["generation"](specs["json"]) and ANSWER_GRAMMARS["generation"](specs["text"]) is None
