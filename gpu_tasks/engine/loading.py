"""Load checkpoints safely: built-in architectures, safetensors or GGUF, under allowed roots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)
from transformers.utils import logging as hf_logging

from gpu_tasks.engine.devices import best_device, best_dtype


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: object
    device: torch.device
    dtype: torch.dtype


_cache: dict[tuple[str, str], LoadedModel] = {}


def load(path: str | Path, fingerprint: str, adapters: tuple[Path, ...] = ()) -> LoadedModel:
    """Load once per worker process; keyed by path and fingerprint. ``adapters`` are
    LoRA adapter folders merged onto the model in order (a variant's lineage)."""
    key = (str(path), fingerprint)
    if key not in _cache:
        _cache.clear()  # one model resident at a time keeps memory predictable
        _cache[key] = load_uncached(Path(path), adapters)
    return _cache[key]


def _source(path: Path) -> tuple[Path, dict]:
    if path.suffix.lower() == ".gguf":
        return path.parent, {"gguf_file": path.name}
    return path, {}


def load_tokenizer(path: str | Path):
    source, kwargs = _source(Path(path))
    return AutoTokenizer.from_pretrained(
        source, trust_remote_code=False, local_files_only=True, **kwargs
    )


def load_uncached(
    path: Path, adapters: tuple[Path, ...] = (), dtype: torch.dtype | None = None
) -> LoadedModel:
    hf_logging.disable_progress_bar()  # progress bars flood worker logs
    device = best_device()
    dtype = dtype or best_dtype(device)
    source, kwargs = _source(path)
    tokenizer = load_tokenizer(path)
    gguf = bool(kwargs)  # a GGUF is its own format; a folder must hold safetensors
    model = AutoModelForCausalLM.from_pretrained(
        source, trust_remote_code=False, local_files_only=True,
        dtype=torch.float32 if adapters else dtype,  # merge in fp32, then cast once
        use_safetensors=None if gguf else True, **kwargs,
    )  # fmt: skip
    model = merge_adapters(model, adapters)
    model.to(device=device, dtype=dtype).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, dtype=dtype)


def merge_adapters(model: PreTrainedModel, adapters: tuple[Path, ...]) -> PreTrainedModel:
    """Fold LoRA adapters (safetensors only) into the model's weights, in order."""
    for adapter in adapters:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, use_safetensors=True).merge_and_unload()
    return model


_classifiers: dict[tuple[str, str], LoadedModel] = {}


def load_classifier(path: str | Path, fingerprint: str) -> LoadedModel:
    """A registered reward model, loaded once per worker process."""
    key = (str(path), fingerprint)
    if key not in _classifiers:
        _classifiers.clear()
        _classifiers[key] = load_classifier_uncached(Path(path))
    return _classifiers[key]


def load_classifier_uncached(path: Path) -> LoadedModel:
    """A reward model: a sequence classifier with one output, safetensors only, in fp32."""
    device = best_device()
    tokenizer = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, trust_remote_code=False, local_files_only=True, use_safetensors=True,
        dtype=torch.float32,
    )  # fmt: skip
    if model.config.num_labels != 1:
        raise ValueError(f"{path} has {model.config.num_labels} outputs; a reward model has 1")
    tokenizer.truncation_side = "left"  # a long conversation keeps its reply
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model.to(device).eval(), tokenizer, device, torch.float32)
