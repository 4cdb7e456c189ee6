"""The package set a model was trained with: every installed distribution, and the lock it came from."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from finetune_loop.core.common.files import sha256_file

# In a checkout (editable install) the lock lies at the repo root; an installed wheel has none.
REPO_LOCK_FILE = Path(__file__).resolve().parents[3] / "requirements.lock"


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_packages() -> dict[str, str]:
    """Every installed distribution, by normalized name (PEP 503), with its version."""
    found = {}
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            found[_normalized(name)] = distribution.version
    return dict(sorted(found.items()))


def lock_sha256(path: Path = REPO_LOCK_FILE) -> str | None:
    """SHA-256 of the install lock, None where the package runs without one."""
    return sha256_file(path) if path.is_file() else None


def package_differences(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """One line per package whose version differs, or that one side lacks, sorted by name."""
    lines = []
    for name in sorted(set(recorded) | set(current)):
        before, now = recorded.get(name), current.get(name)
        if before != now:
            lines.append(f"{name}: {before or 'not installed'} recorded, {now or 'not installed'} installed")
    return lines
