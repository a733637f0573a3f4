"""Registered checkpoints to models in memory or folders on disk, lineage included."""

from __future__ import annotations

from pathlib import Path

import torch

from gpu_tasks.engine.convert import gguf_to_safetensors
from gpu_tasks.engine.loading import LoadedModel, load, load_uncached
from models_registry.inspection import resolve_under_roots
from models_registry.models import Checkpoint, CheckpointFormat


def _root_and_adapters(checkpoint: Checkpoint) -> tuple[Checkpoint, tuple[Path, ...]]:
    """The full model a variant starts from, and the LoRA adapters on top of it, in order."""
    chain = checkpoint.lineage()
    start = max(i for i, c in enumerate(chain) if c.format != CheckpointFormat.PEFT)
    return chain[start], tuple(resolve_under_roots(c.path) for c in chain[start + 1 :])


def load_policy(checkpoint: Checkpoint) -> LoadedModel:
    """A language model, with its adapters merged: what evaluation scores."""
    root, adapters = _root_and_adapters(checkpoint)
    return load(resolve_under_roots(root.path), checkpoint.fingerprint, adapters)


def training_base(checkpoint: Checkpoint, work_dir: Path) -> Path:
    """A safetensors folder of the checkpoint's full weights, for a trainer to start from:
    its own folder when it is one, else written once into ``work_dir/base``."""
    root, adapters = _root_and_adapters(checkpoint)
    root_path = resolve_under_roots(root.path)
    if root.format == CheckpointFormat.GGUF:
        root_path = gguf_to_safetensors(root_path, work_dir / "root")
    if not adapters:
        return root_path
    out = work_dir / "base"
    if not (out / "config.json").exists():
        merged = load_uncached(root_path, adapters, dtype=torch.float32)  # trainers want fp32
        partial = out.with_name("base.partial")
        merged.model.save_pretrained(partial, safe_serialization=True)
        merged.tokenizer.save_pretrained(partial)
        partial.rename(out)
    return out
