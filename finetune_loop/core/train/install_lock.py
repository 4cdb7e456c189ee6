"""The locked install: what a training run records about its packages, and what a rebuild compares.

`make install` installs exactly requirements.lock, the pip-compile lock at the repository root, so
the lock's sha256 names the whole package set of a checkout's .venv. A run records that hash and
`installed_packages()`; a rebuild months later compares both with its own, and
`package_differences` says which packages moved when the hashes disagree.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from finetune_loop.core.common.files import sha256_file

# The repository root, beside the finetune_loop package: there in a checkout, absent (site-packages)
# when the package runs from an installed wheel, which ships without the lock.
REPO_LOCK_FILE = Path(__file__).resolve().parents[3] / "requirements.lock"


def lock_sha256(path: Path = REPO_LOCK_FILE) -> str | None:
    """sha256 hex digest of the lock file, or None when there is none (an installed wheel)."""
    return sha256_file(path) if path.is_file() else None


def normalized_name(name: str) -> str:
    """A distribution's name as package indexes compare it (PEP 503): "PyYAML" -> "pyyaml"."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_packages() -> dict[str, str]:
    """Every installed distribution: normalized name -> version. Where a name is installed twice on
    sys.path, the first one is kept: it is the one that imports."""
    packages: dict[str, str] = {}
    for distribution in importlib.metadata.distributions():
        packages.setdefault(normalized_name(distribution.name), distribution.version)
    return packages


def package_differences(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """One line per package whose version differs or that only one side has, sorted by name, e.g.
    "torch: 2.13.0 recorded, 2.12.1 installed". Empty when the two package sets are the same."""
    recorded = {normalized_name(name): version for name, version in recorded.items()}
    current = {normalized_name(name): version for name, version in current.items()}
    differences = []
    for name in sorted(recorded.keys() | current.keys()):
        was, now = recorded.get(name), current.get(name)
        if was == now:
            continue
        if now is None:
            differences.append(f"{name}: {was} recorded, not installed")
        elif was is None:
            differences.append(f"{name}: {now} installed, not recorded")
        else:
            differences.append(f"{name}: {was} recorded, {now} installed")
    return differences
