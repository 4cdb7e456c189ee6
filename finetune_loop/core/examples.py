"""The unit every stage passes around: one labelled example, and the text key that identifies it."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    id: str
    text: str
    label: str
    source: str = "unspecified"


def normalize_text(text: str) -> str:
    """The key for exact de-duplication: case, Unicode form and spacing do not make a new ticket."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())
