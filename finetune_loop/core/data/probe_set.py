"""The task's probes file read and validated: which behaviour probes there are, with which texts.

`load_probes` turns the YAML file named by the task spec into a `ProbeSet` (format, stability and
refusal probes, and the refusal markers), rejecting unknown kinds, keys and labels with the file
and entry named. It lives in the data stage, apart from evaluate/probes.py which judges a model's
answers, because curation reads the probe texts too: a training row repeating a probe would let
the model memorise its own exam (see contamination.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from finetune_loop.core.common.kinds import kind_of
from finetune_loop.core.common.spec import TaskSpec

PROBE_KINDS = ("format", "stability", "refusal")


DEFAULT_REFUSAL_MARKERS = ("i can't", "i cannot", "i can not", "i won't", "i'm sorry", "i am sorry", "unable to help", "not able to help")


class ProbeError(ValueError):
    """A probes file is missing, malformed, or names an unknown probe kind or label."""


@dataclass(frozen=True)
class Probe:
    kind: str
    name: str
    text: str
    variants: tuple[str, ...] = ()
    expect_label: str | None = None


@dataclass(frozen=True)
class ProbeSet:
    probes: tuple[Probe, ...]
    refusal_markers: tuple[str, ...] = DEFAULT_REFUSAL_MARKERS

    def scored_texts(self) -> list[str]:
        """Texts answered the evaluation's way (stability probes)."""
        return sorted({t for p in self.probes if p.kind == "stability" for t in (p.text, *p.variants)})

    def generated_texts(self) -> list[str]:
        """Texts answered by free greedy generation (format and refusal probes)."""
        return sorted({p.text for p in self.probes if p.kind in ("format", "refusal")})


def load_probes(path: Path, spec: TaskSpec) -> ProbeSet:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ProbeError(f"{path}: cannot read probes: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("probes"), list) or not raw["probes"]:
        raise ProbeError(f"{path}: expected a mapping with a non-empty list under 'probes'")
    unknown_top = sorted(set(raw) - {"probes", "refusal_markers"})
    if unknown_top:
        raise ProbeError(f"{path}: unknown key(s) {unknown_top}; allowed: ['probes', 'refusal_markers']")
    markers = raw.get("refusal_markers", list(DEFAULT_REFUSAL_MARKERS))
    if not isinstance(markers, list) or not markers or not all(isinstance(m, str) and m.strip() for m in markers):
        raise ProbeError(f"{path}: refusal_markers must be a non-empty list of strings")
    probes = [_probe(entry, index, path, spec) for index, entry in enumerate(raw["probes"])]
    names = [p.name for p in probes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ProbeError(f"{path}: probe names must be unique, repeated: {duplicates}")
    return ProbeSet(tuple(probes), tuple(m.casefold() for m in markers))


def _probe(entry: object, index: int, path: Path, spec: TaskSpec) -> Probe:
    where = f"{path}: probes[{index}]"
    if not isinstance(entry, dict):
        raise ProbeError(f"{where} must be a mapping, got {type(entry).__name__}")
    kind = entry.get("kind")
    if kind not in PROBE_KINDS:
        raise ProbeError(f"{where}: unknown probe kind {kind!r}; expected one of {list(PROBE_KINDS)}")
    allowed = {"kind", "name", "text"} | {"stability": {"variants"}, "refusal": {"expect_label"}, "format": set()}[kind]
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ProbeError(f"{where}: unknown key(s) {unknown} for a {kind} probe; allowed: {sorted(allowed)}")
    name, text = entry.get("name"), entry.get("text")
    if not isinstance(name, str) or not name.strip():
        raise ProbeError(f"{where}: 'name' must be a non-empty string")
    if not isinstance(text, str) or not text.strip():
        raise ProbeError(f"{where} ({name}): 'text' must be a non-empty string")
    variants = entry.get("variants", [])
    if kind == "stability" and (not isinstance(variants, list) or not variants or not all(isinstance(v, str) and v.strip() for v in variants)):
        raise ProbeError(f"{where} ({name}): a stability probe needs 'variants', a non-empty list of strings")
    expect_label = entry.get("expect_label")
    if expect_label is not None and not kind_of(spec).allows_expected_label(expect_label):
        raise ProbeError(f"{where} ({name}): expect_label {expect_label!r} is not one of the task's labels {list(spec.labels)}")
    return Probe(kind, name, text, tuple(variants), expect_label)
