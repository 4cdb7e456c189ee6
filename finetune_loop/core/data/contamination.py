"""What the evaluation asks a model about, so that curation can keep it out of the training rows.

`evaluation_rows` collects, per suite, the frozen suites' rows and every behaviour probe text
(stability variants too). Curation removes training rows that (nearly) repeat any of them; it is
a module of its own because it joins two sources, the frozen suites (suites.py) and the probes
file (probe_set.py), that the rest of curation does not otherwise need together.
"""

from __future__ import annotations

from typing import Sequence

from finetune_loop.core.common.examples import (
    Example,
)
from finetune_loop.core.common.spec import TaskSpec
from finetune_loop.core.data.probe_set import load_probes
from finetune_loop.core.data.readers import read_examples
from finetune_loop.core.data.suites import FrozenSuite

PROBES_SUITE = "probes"


def evaluation_rows(spec: TaskSpec, suites: Sequence[FrozenSuite]) -> dict[str, list[Example]]:
    """Every text the evaluation asks a model about, by suite: the frozen suites' rows and the
    behaviour probes' texts (each stability variant too). A training row repeating any of them
    would let the model memorise its own exam."""
    rows = {suite.name: read_examples(suite.path) for suite in suites}
    if spec.probes_path is not None:
        probe_set = load_probes(spec.probes_path, spec)
        rows[PROBES_SUITE] = [
            Example(id=f"probe:{probe.name}:{n}", text=text, label=probe.expect_label or "")
            for probe in probe_set.probes
            for n, text in enumerate((probe.text, *probe.variants))
        ]
    return rows
