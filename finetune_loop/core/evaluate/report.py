"""Evaluation on frozen suites, three layers, every model on the same rows in one process.

1. Task metrics on the holdout (core/metrics.py), overall and per slice.
2. The frozen regression suite: pass rate, and the cases the reference (champion, else base) got
   right that the candidate gets wrong.
3. Behaviour probes (core/probes.py) from the task's probes file.

Beside them, the memorisation check (core/memorisation.py): whether the candidate writes sampled
training rows, or canaries planted in them, back verbatim, next to what the base writes.

Models compared: the base, the candidate (`challenger`) and the current `champion` when the registry
has one; optionally a frontier model behind an OpenAI-compatible endpoint (core/frontier.py), on
the holdout only, for reference. Classification answers come from label-likelihood scoring,
generation answers from batched greedy decoding (core/scoring.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Collection, Sequence

from finetune_loop.core.common.examples import Example
from finetune_loop.core.common.files import sha256_file, write_text_atomic
from finetune_loop.core.common.kinds import kind_of
from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.common.tracker import Tracker
from finetune_loop.core.data.probe_set import ProbeSet, load_probes
from finetune_loop.core.data.readers import read_examples
from finetune_loop.core.evaluate import frontier as frontier_models
from finetune_loop.core.evaluate.gate import GateEvidence, GateVerdict, decide_release
from finetune_loop.core.evaluate.memorisation import MemorisationReport, check_memorisation
from finetune_loop.core.evaluate.metrics import Scores, score_suite
from finetune_loop.core.evaluate.probes import ProbeReport, judge_probes
from finetune_loop.core.evaluate.scoring import answer_budget, answer_suite, generate_answers

MODEL_ORDER = ("base", "candidate", "champion", "frontier")


@dataclass(frozen=True)
class ModelEvaluation:
    name: str
    # Registry version (candidate, champion) or endpoint model name (frontier); None for the base.
    version: str | None
    holdout: Scores
    regression: Scores | None
    probes: ProbeReport | None
    ms_per_example: float
    # The recent suite (labelled production requests no model trained on); None without one.
    recent: Scores | None = None


@dataclass(frozen=True)
class EvalResult:
    models: dict[str, ModelEvaluation]
    # Regression cases the reference model got right and the candidate gets wrong.
    newly_failing: list[dict]
    verdict: GateVerdict
    table_markdown: str
    chart_path: Path
    report_path: Path
    mlflow_run_id: str
    seconds: float
    # The frontier comparison: which model and its token cost, or why it was skipped.
    frontier_summary: str
    # None when not checked; the summary then says why.
    memorisation: MemorisationReport | None
    memorisation_summary: str

    @property
    def base(self) -> Scores:
        return self.models["base"].holdout

    @property
    def candidate(self) -> Scores:
        return self.models["candidate"].holdout

    @property
    def champion(self) -> Scores | None:
        return self.models["champion"].holdout if "champion" in self.models else None


@dataclass(frozen=True)
class ChampionAdapter:
    version: str
    directory: Path
    # The champion's own base model when it is not the candidate's (a base-model migration); None: the same base.
    base_dir: Path | None = None


def _evaluate_model(name, version, answer: Callable[[Sequence[str]], list[str]], spec, holdout, regression, probes, recent=()) -> ModelEvaluation:
    started = time.perf_counter()
    holdout_scores = score_suite(spec, holdout, answer([e.text for e in holdout]))
    ms_per_example = (time.perf_counter() - started) * 1000 / len(holdout)
    regression_scores = score_suite(spec, regression, answer([e.text for e in regression])) if regression else None
    recent_scores = score_suite(spec, recent, answer([e.text for e in recent])) if recent else None
    return ModelEvaluation(name, version, holdout_scores, regression_scores, probes, ms_per_example, recent_scores)


def evaluate_candidate(
    spec: TaskSpec,
    base_dir: Path,
    adapter_dir: Path,
    candidate_version: str,
    holdout_path: Path,
    regression_path: Path,
    out_dir: Path,
    tracker: Tracker,
    champion: ChampionAdapter | None = None,
    run_tags: dict[str, str] | None = None,
    *,
    recent_path: Path | None = None,
    trigger: str = "manual",
    training_rows_path: Path | None = None,
    admitted_labels: Collection[str] = (),
) -> EvalResult:
    """Base, candidate and champion on the same frozen suites (holdout, regression, and the recent
    suite when there is one) and probes, the memorisation check of the candidate on the rows it
    trained on (`training_rows_path`, the row-store file its manifest names), then the release
    verdict; `trigger` (what started the retrain) picks the recent suite's rule. The recent rows of
    `admitted_labels` (admitted since any version trained) complete the holdout of the champion
    comparison (core/evaluate/gate.py)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    holdout = read_examples(holdout_path)
    regression = read_examples(regression_path)
    recent = read_examples(recent_path) if recent_path else []
    probe_set = load_probes(spec.probes_path, spec) if spec.probes_path else None
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    max_new_tokens = answer_budget(tokenizer, spec, holdout + regression)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)

    def run(name: str, version: str | None, answering_model, base_probe_answers: dict[str, str] | None, own_tokenizer=None):
        model_tokenizer = own_tokenizer or tokenizer
        budget = max_new_tokens if own_tokenizer is None else answer_budget(own_tokenizer, spec, holdout + regression)
        answer = lambda texts: answer_suite(answering_model, model_tokenizer, spec, texts, budget)  # noqa: E731
        probes, generated = _probe(spec, probe_set, answering_model, model_tokenizer, answer, base_probe_answers)
        return _evaluate_model(name, version, answer, spec, holdout, regression, probes, recent), generated

    models: dict[str, ModelEvaluation] = {}
    models["base"], base_generated = run("base", None, model, None)
    # Adapters wrap the already-loaded base: one load serves every model.
    adapted = PeftModel.from_pretrained(model, adapter_dir, adapter_name="candidate")
    models["candidate"], _ = run("candidate", candidate_version, adapted, base_generated)
    if champion is not None and champion.base_dir is not None:
        # A champion of another base (the candidate migrates the task to a new one) answers on its
        # own base, with its own tokenizer: the gate compares what each would serve.
        own = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(champion.base_dir, dtype=torch.float32), champion.directory)
        models["champion"], _ = run("champion", champion.version, own.eval(), base_generated, AutoTokenizer.from_pretrained(champion.directory))
        del own
    elif champion is not None:
        adapted.load_adapter(champion.directory, adapter_name="champion")
        adapted.set_adapter("champion")
        models["champion"], _ = run("champion", champion.version, adapted, base_generated)
        adapted.set_adapter("candidate")
    memorisation, memorisation_summary = _memorisation(spec, adapted, tokenizer, training_rows_path)

    frontier_settings, frontier_summary = frontier_models.settings_from_env()
    if frontier_settings is not None:
        client = frontier_models.FrontierClient(frontier_settings, spec)
        models["frontier"] = _evaluate_model("frontier", frontier_settings.model, client.answer, spec, holdout, [], None)
        cost = f", estimated ${client.cost_usd:.4f}" if client.cost_usd is not None else ""
        frontier_summary = f"{frontier_settings.model} at {frontier_settings.base_url}: {client.tokens} tokens for {len(holdout)} rows{cost}"

    reference = models.get("champion", models["base"])
    newly_failing = _newly_failing(regression, models["candidate"].regression, reference)
    candidate = models["candidate"]
    evidence = GateEvidence(
        candidate=candidate.holdout,
        base=models["base"].holdout,
        champion=models["champion"].holdout if "champion" in models else None,
        champion_version=champion.version if champion else None,
        regression_pass_rate=candidate.regression.primary if candidate.regression else None,
        regression_cases=len(regression),
        newly_failing=len(newly_failing),
        probe_pass_rate=candidate.probes.pass_rate if candidate.probes else None,
        probe_cases=len(candidate.probes.cases) if candidate.probes else 0,
        recent_candidate=candidate.recent,
        recent_champion=models["champion"].recent if "champion" in models else None,
        recent_base=models["base"].recent,
        trigger=trigger,
        **_admitted_rows(recent, admitted_labels, candidate, models.get("champion")),
        memorisation_rows=memorisation.rows_sampled if memorisation else 0,
        newly_memorised_rows=len(memorisation.newly_memorised) if memorisation else 0,
    )
    verdict = decide_release(spec.gate, evidence)
    table = comparison_table(spec, holdout, models, recent)
    out_dir.mkdir(parents=True, exist_ok=True)
    chart_path = plot_comparison(spec, holdout, models, out_dir / "eval_chart.png")
    seconds = time.perf_counter() - started
    report_path = out_dir / "eval_report.json"
    memorisation_record = {"checked": memorisation is not None, "summary": memorisation_summary, **(memorisation.record() if memorisation else {})}
    write_text_atomic(
        report_path, json.dumps(_report_json(spec, models, newly_failing, verdict, frontier_summary, memorisation_record, seconds), indent=2)
    )

    with tracker.run(f"eval-{spec.name}", tags={"stage": "eval", **(run_tags or {})}) as run_id:
        tracker.log_params(run_id, {
            "holdout_rows": len(holdout), "holdout_path": holdout_path, "regression_rows": len(regression),
            "recent_rows": len(recent), "recent_path": recent_path or "none",
            "recent_sha256": sha256_file(recent_path) if recent_path else "none", "trigger": trigger,
            "probes_path": spec.probes_path, "champion_version": champion.version if champion else "none", "gate": spec.gate,
            "memorisation": spec.memorisation, "training_rows_path": training_rows_path or "none",
        })
        tracker.log_metrics(run_id, {
            **{f"{name}_{metric}": value for name, m in models.items() for metric, value in _headline(m).items()},
            "gate_passed": float(verdict.passed), "eval_seconds": seconds, "regression_newly_failing": len(newly_failing),
            **_memorisation_metrics(memorisation),
        })
        tracker.set_tags(run_id, {"gate_verdict": verdict.summary()})
        tracker.log_text(run_id, table, "eval_table.md")
        tracker.log_artifact(run_id, chart_path)
        tracker.log_artifact(run_id, report_path)
        rows = [
            {"id": e.id, "label": e.label, **{name: m.holdout.predictions[i] for name, m in models.items()}}
            for i, e in enumerate(holdout)
        ]
        tracker.log_text(run_id, "\n".join(json.dumps(r) for r in rows), "predictions.jsonl")
    return EvalResult(
        models, newly_failing, verdict, table, chart_path, report_path, run_id, seconds, frontier_summary, memorisation, memorisation_summary
    )


def _memorisation(spec: TaskSpec, adapted, tokenizer, training_rows_path: Path | None) -> tuple[MemorisationReport | None, str]:
    """The candidate's memorisation report (None when not checked) and its one-line summary."""
    if not spec.memorisation.enabled:
        return None, "not checked: memorisation.enabled is false"
    if training_rows_path is None:
        return None, "not checked: no training rows given (evaluate_candidate's training_rows_path)"
    report = check_memorisation(adapted, tokenizer, spec, read_examples(training_rows_path))
    return report, report.summary()


def _memorisation_metrics(report: MemorisationReport | None) -> dict[str, float]:
    if report is None:
        return {}
    shares = {
        "candidate_memorised_share": report.memorised_share("candidate"), "base_memorised_share": report.memorised_share("base"),
        "newly_memorised_share": report.newly_memorised_share,
    }
    # A share of no sampled row is not a number: left out rather than logged as 0.
    return {**{k: v for k, v in shares.items() if v is not None}, "canaries_exposed": report.canaries_exposed,
            "memorisation_seconds": report.seconds}


def _admitted_rows(recent: Sequence[Example], admitted_labels: Collection[str], candidate: ModelEvaluation, champion: ModelEvaluation | None) -> dict:
    """The candidate's and champion's right/wrong on the recent rows of `admitted_labels` (labels
    admitted since any version trained): GateEvidence's completion of the holdout."""
    if champion is None or not admitted_labels or candidate.recent is None or champion.recent is None:
        return {}
    rows = [i for i, example in enumerate(recent) if example.label in admitted_labels]
    return {"admitted_candidate": [candidate.recent.correct[i] for i in rows], "admitted_champion": [champion.recent.correct[i] for i in rows]}


def _probe(spec, probe_set: ProbeSet | None, model, tokenizer, answer, base_generated):
    """One model's probe report and its free answers (the base's decide which refusals apply)."""
    if probe_set is None:
        return None, None
    scored = dict(zip(probe_set.scored_texts(), answer(probe_set.scored_texts())))
    texts = probe_set.generated_texts()
    generated = dict(zip(texts, generate_answers(model, tokenizer, spec, texts, max_new_tokens=kind_of(spec).probe_max_new_tokens)))
    return judge_probes(spec, probe_set, scored, generated, base_generated or generated), generated


def _newly_failing(regression: Sequence[Example], candidate: Scores | None, reference: ModelEvaluation) -> list[dict]:
    if candidate is None or reference.regression is None:
        return []
    return [
        {"id": e.id, "text": e.text, "label": e.label, reference.name: reference.regression.predictions[i], "candidate": candidate.predictions[i]}
        for i, e in enumerate(regression)
        if reference.regression.correct[i] and not candidate.correct[i]
    ]


def _headline(m: ModelEvaluation) -> dict[str, float]:
    """The numbers of one model that become MLflow metrics `<model>_<name>`."""
    values = {"accuracy" if m.holdout.primary_name == "accuracy" else m.holdout.primary_name: m.holdout.primary, **m.holdout.metrics}
    values["ms_per_example"] = m.ms_per_example
    if m.regression is not None:
        values["regression_pass_rate"] = m.regression.primary
    if m.recent is not None:
        values["recent_" + m.recent.primary_name] = m.recent.primary
    if m.probes is not None and m.probes.pass_rate is not None:
        values["probe_pass_rate"] = m.probes.pass_rate
    return values


def comparison_table(spec: TaskSpec, holdout: Sequence[Example], models: dict[str, ModelEvaluation], recent: Sequence[Example] = ()) -> str:
    """Markdown: one row per metric, per label (recall) and per slice value of the holdout, then
    the same for the recent suite when there is one; one column per model."""
    names = [n for n in MODEL_ORDER if n in models]
    header = ["| | n | " + " | ".join(_column(models[n]) for n in names) + " |", "|---|---:|" + "---:|" * len(names)]

    def row(title: str, n: int | str, values: list[float | None], fmt: str = "{:.3f}") -> str:
        return f"| {title} | {n} | " + " | ".join("–" if v is None else fmt.format(v) for v in values) + " |"

    def suite_rows(suite: str, scores: Callable[[ModelEvaluation], Scores | None], rows: int) -> list[str]:
        candidate = scores(models["candidate"])
        primary = candidate.primary_name
        lines = [row(f"**{suite} {primary}**", rows, [s.primary if (s := scores(models[n])) else None for n in names])]
        for metric in candidate.metrics:
            if metric != primary:
                lines.append(row(f"{suite} {metric}", rows, [s.metrics.get(metric) if (s := scores(models[n])) else None for n in names]))
        for label, stats in candidate.per_label.items():
            if stats.support:
                lines.append(row(f"{suite} recall `{label}`", stats.support, [s.per_label[label].recall if (s := scores(models[n])) else None for n in names]))
        for slice_field, values in candidate.per_slice.items():
            for value, (_, count) in values.items():
                lines.append(row(f"{suite} {slice_field}=`{value}`", count, [s.per_slice[slice_field][value][0] if (s := scores(models[n])) else None for n in names]))
        return lines

    lines = suite_rows("holdout", lambda m: m.holdout, len(holdout))
    regression = models["candidate"].regression
    lines.append(row("regression pass rate", len(regression.correct) if regression else 0,
                     [models[n].regression.primary if models[n].regression else None for n in names]))
    probes = models["candidate"].probes
    lines.append(row("probe pass rate", len(probes.cases) if probes else 0,
                     [models[n].probes.pass_rate if models[n].probes else None for n in names]))
    lines.append(row("ms / example", "", [models[n].ms_per_example for n in names], "{:.1f}"))
    if models["candidate"].recent is not None:
        lines += suite_rows("recent", lambda m: m.recent, len(recent))
    return "\n".join(header + lines)


def _column(m: ModelEvaluation) -> str:
    return m.name if m.version is None else f"{m.name} ({'v' + m.version if m.name != 'frontier' else m.version})"


def plot_comparison(spec: TaskSpec, holdout: Sequence[Example], models: dict[str, ModelEvaluation], path: Path) -> Path:
    """Bar chart of base vs tuned (and champion) per label (recall) or per slice value, with the
    gate's threshold as a line: where the candidate gained, and where it is still short."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    names = [n for n in ("base", "candidate", "champion") if n in models]
    candidate = models["candidate"].holdout
    groups: list[tuple[str, Callable[[Scores], float]]] = [("all", lambda s: s.primary)]
    groups += [(label, lambda s, l=label: s.per_label[l].recall) for label, st in candidate.per_label.items() if st.support]
    groups += [
        (f"{f}={v}", lambda s, f=f, v=v: s.per_slice[f][v][0]) for f, values in candidate.per_slice.items() for v in values
    ]
    width = 0.8 / len(names)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.7 * len(groups) + 2), 3.8))
    for k, name in enumerate(names):
        scores = models[name].holdout
        axes.bar([i + k * width for i in range(len(groups))], [value(scores) for _, value in groups], width, label=_column(models[name]))
    axes.axhline(spec.gate.min_accuracy, color="red", linestyle="--", linewidth=1, label=f"gate {spec.gate.min_accuracy:.2f}")
    axes.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(groups))], [g for g, _ in groups], rotation=40, ha="right")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel(kind_of(spec).group_metric_name)
    axes.set_title(f"{spec.name}: holdout {candidate.primary_name} ({len(holdout)} rows)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path



def _report_json(spec, models, newly_failing, verdict: GateVerdict, frontier_summary, memorisation: dict, seconds) -> dict:
    return {
        "task": spec.name,
        "gate": {"passed": verdict.passed, "sub_gates": [asdict(g) for g in verdict.sub_gates]},
        "models": {
            name: {
                "version": m.version,
                "holdout": {"primary": m.holdout.primary_name, **m.holdout.metrics},
                "per_label": {label: asdict(stats) for label, stats in m.holdout.per_label.items()},
                "confusion": m.holdout.confusion,
                "per_slice": m.holdout.per_slice,
                "per_field_f1": m.holdout.per_field_f1,
                "regression_pass_rate": m.regression.primary if m.regression else None,
                "probe_pass_rate": m.probes.pass_rate if m.probes else None,
                "probe_pass_rate_by_kind": m.probes.pass_rate_by_kind() if m.probes else None,
                "probe_failures": [asdict(c) for c in m.probes.failures()] if m.probes else [],
                "ms_per_example": m.ms_per_example,
                "recent": None if m.recent is None else {
                    "primary": m.recent.primary_name, "rows": len(m.recent.correct), **m.recent.metrics,
                    "per_label": {label: asdict(stats) for label, stats in m.recent.per_label.items()},
                    "per_slice": m.recent.per_slice,
                },
            }
            for name, m in models.items()
        },
        "gate_power": verdict.power,
        "regression_newly_failing": newly_failing,
        "frontier": frontier_summary,
        "memorisation": memorisation,
        "seconds": seconds,
    }
