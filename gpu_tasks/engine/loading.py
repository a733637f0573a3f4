"""Load checkpoints safely: built-in architectures, safetensors or GGUF, under allowed roots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from gpu_tasks.engine.devices import best_device, best_dtype


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: object
    device: torch.device
    dtype: torch.dtype


_cache: dict[tuple[str, str], LoadedModel] = {}


def load(path: str | Path, fingerprint: str) -> LoadedModel:
    """Load once per worker process; keyed by path and fingerprint."""
    key = (str(path), fingerprint)
    if key not in _cache:
        _cache.clear()  # one model resident at a time keeps memory predictable
        _cache[key] = _load(Path(path))
    return _cache[key]


def _load(path: Path) -> LoadedModel:
    hf_logging.disable_progress_bar()  # progress bars flood worker logs
    device = best_device()
    dtype = best_dtype(device)
    if path.suffix.lower() == ".gguf":
        kwargs = {"gguf_file": path.name}
        source = path.parent
    else:
        kwargs = {"use_safetensors": True}
        source = path
    tokenizer = AutoTokenizer.from_pretrained(
        source, trust_remote_code=False, local_files_only=True, **kwargs
    )
    model = AutoModelForCausalLM.from_pretrained(
        source, trust_remote_code=False, local_files_only=True, dtype=dtype, **kwargs
    )
    model.to(device).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, dtype=dtype)
