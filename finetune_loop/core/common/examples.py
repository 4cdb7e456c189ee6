"""The unit every stage passes around: one labelled example, and the text key that identifies it."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

# The slice value reported for a row that has none for a slice field.
MISSING_SLICE_VALUE = "(missing)"


@dataclass(frozen=True)
class Example:
    id: str
    text: str
    # The answer: one of the task's labels (classification) or the target text / compact JSON
    # (generation). Named `label` in every file the loop writes, whatever the task's own column is.
    label: str
    source: str = "unspecified"
    licence: str = "unspecified"
    # Slice/cohort field -> value (e.g. {"channel": "email"}); a row without a value has no entry.
    slices: dict[str, str] = field(default_factory=dict, hash=False)


def normalize_text(text: str) -> str:
    """The key for exact de-duplication: case, Unicode form and spacing do not make a new ticket."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def normalize_answer(text: str) -> str:
    """Case, Unicode form, surrounding punctuation and spacing do not make a different answer."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().strip().strip(".!?,;:\"'").split())
