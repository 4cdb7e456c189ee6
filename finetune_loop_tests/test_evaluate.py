"""evaluate_candidate without Dagster: base, candidate and champion adapters in one process, the
frontier comparison over real HTTP, and a generation task's metrics and probes."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune_loop.core.common.examples import Example
from finetune_loop.core.common.files import write_jsonl
from finetune_loop.core.common.home import LoopHome
from finetune_loop.core.common.spec import load_task_spec
from finetune_loop.core.common.tracker import Tracker
from finetune_loop.core.evaluate import report
from finetune_loop.core.evaluate.scoring import predict_labels
from finetune_loop_tests.conftest import TINY_PROBES, tiny_rows, write_tiny_task


def _random_adapter(base_dir: Path, out_dir: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) weights, saved like a trained one with its tokenizer."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    return out_dir


def _adapter_answering(base_dir: Path, out_dir: Path, spec, texts: list[str], answers: list[str], steps: int = 30) -> Path:
    """A LoRA adapter trained (a few Adam steps on the answer tokens) to give `answers`: two such
    adapters answer differently, so mixing them up would show."""
    from peft import LoraConfig, get_peft_model

    from finetune_loop.core.train.prompts import encode_completion, encode_prompt

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    rows = []
    for text, answer in zip(texts, answers):
        prompt = encode_prompt(tokenizer, spec, text)
        completion = encode_completion(tokenizer, spec, text, answer)
        rows.append((torch.tensor([prompt + completion]), torch.tensor([[-100] * len(prompt) + completion])))
    model.train()
    for step in range(steps):
        ids, labels = rows[step % len(rows)]
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _suite(path: Path, rows: list[dict]) -> Path:
    write_jsonl(path, [{"id": r["id"], "text": r["text"], "label": r["label"]} for r in rows])
    return path


@pytest.fixture
def tracker(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    home = LoopHome(tmp_path / "home")
    return Tracker.for_task(home, "tiny_triage")


class _FrontierHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that routes by keyword, the way a strong model would."""

    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        text = body["messages"][-1]["content"]
        label = "Shipping." if any(w in text for w in ("parcel", "delivery", "tracking", "package")) else (
            "login" if any(w in text for w in ("log in", "password", "locked", "code")) else "billing")
        payload = {"choices": [{"message": {"role": "assistant", "content": label}}], "usage": {"total_tokens": 50}}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_base_candidate_champion_and_frontier_on_the_same_suites(tmp_path, tiny_base_model, tracker, monkeypatch):
    spec = load_task_spec(write_tiny_task(tmp_path / "task", tiny_base_model, probes=TINY_PROBES))
    rows = tiny_rows(6, seed=5)
    holdout = _suite(tmp_path / "holdout.jsonl", rows[:12])
    regression = _suite(tmp_path / "regression.jsonl", rows[12:])
    texts = [r["text"] for r in rows[:12]]
    candidate_dir = _adapter_answering(tiny_base_model, tmp_path / "candidate", spec, texts, [r["label"] for r in rows[:12]])
    champion_dir = _adapter_answering(tiny_base_model, tmp_path / "champion", spec, texts, ["login"] * 12)

    server = ThreadingHTTPServer(("127.0.0.1", 0), _FrontierHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("FINETUNE_LOOP_FRONTIER_BASE_URL", f"http://127.0.0.1:{server.server_port}/v1")
    monkeypatch.setenv("FINETUNE_LOOP_FRONTIER_MODEL", "keyword-router")
    monkeypatch.setenv("FINETUNE_LOOP_FRONTIER_API_KEY", "sk-test")
    monkeypatch.setenv("FINETUNE_LOOP_FRONTIER_COST_PER_1K", "0.5")
    try:
        result = report.evaluate_candidate(
            spec, tiny_base_model, candidate_dir, "2", holdout, regression, tmp_path / "eval", tracker,
            champion=report.ChampionAdapter("1", champion_dir),
        )
    finally:
        server.shutdown()

    assert list(result.models) == ["base", "candidate", "champion", "frontier"]
    # Each model's answers are those of that model alone: the adapters were switched, not mixed.
    tokenizer = AutoTokenizer.from_pretrained(candidate_dir)
    from peft import PeftModel
    for name, directory in (("candidate", candidate_dir), ("champion", champion_dir)):
        alone = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base_model), directory)
        assert result.models[name].holdout.predictions == predict_labels(alone, tokenizer, spec, texts)
    assert result.models["base"].holdout.predictions == predict_labels(AutoModelForCausalLM.from_pretrained(tiny_base_model), tokenizer, spec, texts)
    assert result.models["candidate"].holdout.predictions != result.models["champion"].holdout.predictions

    # Newly failing regression cases: the champion (the reference) right, the candidate wrong.
    champion_reg, candidate_reg = result.models["champion"].regression, result.models["candidate"].regression
    expected = [rows[12 + i]["id"] for i in range(len(candidate_reg.correct)) if champion_reg.correct[i] and not candidate_reg.correct[i]]
    assert [case["id"] for case in result.newly_failing] == expected

    # The frontier: real HTTP, the task's own prompt, "Shipping." mapped to the label it means.
    frontier = result.models["frontier"].holdout
    expected_frontier = ["shipping" if any(w in t for w in ("parcel", "delivery", "tracking", "package")) else
                         "login" if any(w in t for w in ("log in", "password", "locked", "code")) else "billing" for t in texts]
    assert frontier.predictions == expected_frontier
    sent = _FrontierHandler.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer sk-test"
    assert sent["body"]["messages"][0] == {"role": "system", "content": spec.system_prompt()}
    assert result.frontier_summary == f"keyword-router at http://127.0.0.1:{server.server_port}/v1: 600 tokens for 12 rows, estimated $0.3000"

    gate = {g.name: g for g in result.verdict.sub_gates}
    assert "champion v1" in gate["non_inferior_to_champion"].detail
    assert result.models["candidate"].probes.pass_rate is not None and len(result.models["candidate"].probes.cases) == 4
    assert "| | n | base | candidate (v2) | champion (v1) | frontier (keyword-router) |" in result.table_markdown
    saved = json.loads(result.report_path.read_text())
    assert saved["models"]["frontier"]["holdout"]["accuracy"] == frontier.accuracy
    assert result.chart_path.read_bytes()[:4] == b"\x89PNG"


def test_frontier_skipped_and_said_without_its_settings(tmp_path, tiny_base_model, tracker, monkeypatch):
    monkeypatch.delenv("FINETUNE_LOOP_FRONTIER_BASE_URL", raising=False)
    spec = load_task_spec(write_tiny_task(tmp_path / "task", tiny_base_model))
    rows = tiny_rows(2, seed=9)
    result = report.evaluate_candidate(
        spec, tiny_base_model, _random_adapter(tiny_base_model, tmp_path / "a", 3), "1",
        _suite(tmp_path / "h.jsonl", rows[:4]), _suite(tmp_path / "r.jsonl", rows[4:]), tmp_path / "eval", tracker,
    )
    assert "frontier" not in result.models
    assert result.frontier_summary.startswith("skipped: set FINETUNE_LOOP_FRONTIER_BASE_URL and FINETUNE_LOOP_FRONTIER_MODEL")
    assert result.models["candidate"].probes is None
    assert {g.name: g.line() for g in result.verdict.sub_gates}["behaviour_probes"] == "SKIP no probe cases (the task names no probes file, or none applied)"


def test_generation_task_uses_greedy_answers_and_generation_metrics(tmp_path, tiny_base_model, tracker):
    rows = [{"id": f"g{i}", "email": f"order {i} arrived broken", "target": {"order": i, "problem": "broken"}} for i in range(6)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "probes.yaml").write_text("probes:\n  - {kind: format, name: json_out, text: 'order 7 is missing'}\n")
    (tmp_path / "task.yaml").write_text(yaml.safe_dump({
        "name": "extract", "kind": "generation", "target_format": "json", "base_model": str(tiny_base_model),
        "instruction": "Extract the order and the problem as JSON.", "data": {"labeled_examples": "rows.jsonl"},
        "fields": {"input": "email", "label": "target"}, "probes": "probes.yaml",
    }))
    spec = load_task_spec(tmp_path / "task.yaml")
    suite = [Example(id=r["id"], text=r["email"], label=json.dumps(r["target"], separators=(",", ":"))) for r in rows]
    write_jsonl(tmp_path / "h.jsonl", [{"id": e.id, "text": e.text, "label": e.label} for e in suite[:4]])
    write_jsonl(tmp_path / "r.jsonl", [{"id": e.id, "text": e.text, "label": e.label} for e in suite[4:]])
    result = report.evaluate_candidate(
        spec, tiny_base_model, _random_adapter(tiny_base_model, tmp_path / "a", 4), "1",
        tmp_path / "h.jsonl", tmp_path / "r.jsonl", tmp_path / "eval", tracker,
    )
    candidate = result.models["candidate"].holdout
    assert candidate.primary_name == "exact_match"
    assert set(candidate.metrics) >= {"exact_match", "normalized_match", "json_valid"}
    # A random model writes no valid JSON: every metric is measured, and measured as zero.
    assert candidate.metrics["json_valid"] == 0.0 and candidate.primary == 0.0
    assert [c.kind for c in result.models["candidate"].probes.cases] == ["format"]
    assert "| **holdout exact_match** | 4 |" in result.table_markdown
