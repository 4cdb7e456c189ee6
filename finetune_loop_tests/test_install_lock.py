import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from finetune_loop.core.train.install_lock import (
    REPO_LOCK_FILE,
    installed_packages,
    lock_sha256,
    normalized_name,
    package_differences,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _locked_pins() -> dict[str, str]:
    """requirements.lock's `name==version` lines (each followed by its hashes)."""
    return {normalized_name(name): version for name, version in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", REPO_LOCK_FILE.read_text(), re.M)}


def test_lock_sha256_hashes_the_file_and_is_none_without_one(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_bytes(b"abc")
    assert lock_sha256(lock) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert lock_sha256(tmp_path / "absent.lock") is None


def test_the_default_lock_is_the_checkouts_own():
    assert REPO_LOCK_FILE == REPO_ROOT / "requirements.lock"
    assert lock_sha256() == lock_sha256(REPO_ROOT / "requirements.lock") is not None


def test_package_differences_name_each_changed_or_one_sided_package():
    recorded = {"torch": "2.13.0", "numpy": "2.4.6", "PyYAML": "6.0.4", "peft": "0.21.2"}
    current = {"torch": "2.12.1", "numpy": "2.4.6", "pyyaml": "6.0.4", "gguf": "0.19.0"}
    assert package_differences(recorded, current) == [
        "gguf: 0.19.0 installed, not recorded",
        "peft: 0.21.2 recorded, not installed",
        "torch: 2.13.0 recorded, 2.12.1 installed",
    ]
    assert package_differences(current, current) == []


def test_installed_packages_are_keyed_by_normalized_name():
    packages = installed_packages()
    assert packages["pyyaml"] == yaml.__version__  # the distribution is named "PyYAML"
    assert all(name == normalized_name(name) for name in packages)


def test_the_lock_pins_cpu_torch_and_every_direct_dependency():
    pins = _locked_pins()
    torch = Version(pins["torch"])
    assert (torch.public, torch.local) == ("2.13.0", "cpu")
    assert not [name for name in pins if name.startswith("nvidia-")]
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    direct = [Requirement(line) for line in project["dependencies"] + project["optional-dependencies"]["test"]]
    for requirement in direct:
        if requirement.marker is None or requirement.marker.evaluate():
            name = normalized_name(requirement.name)
            assert name in pins, f"{name} is not in the lock"
            assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {requirement}"
