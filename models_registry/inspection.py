"""Validate a checkpoint on disk and read its facts, before anything is stored.

Reads only headers and small JSON files: no weights are loaded and nothing is
unpickled. Every refusal is a ``CheckpointError`` whose message says what is
wrong and what to do.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}
TOKENIZER_FILES = {"tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt"}
SAFETENSORS_DTYPES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint that Keel refuses, with a message for the user."""


@dataclass(frozen=True)
class CheckpointFacts:
    path: Path
    format: str  # "hf", "gguf" or "peft"
    weight_files: tuple[Path, ...]
    fingerprint: str
    architecture: str
    model_type: str
    parameter_count: int
    dtype: str
    has_chat_template: bool
    tokenizer: str
    kind: str = "policy"  # or "reward": a sequence classifier with one output


def inspect_checkpoint(raw_path: str | Path) -> CheckpointFacts:
    path = resolve_under_roots(raw_path)
    if path.is_dir() and (path / "adapter_config.json").exists():
        return _inspect_adapter(path)
    if path.is_dir():
        return _inspect_hf_dir(path)
    if path.suffix.lower() == ".gguf":
        return _inspect_gguf(path)
    raise CheckpointError(
        f"{path} is neither a Hugging Face model folder nor a .gguf file. "
        "Give the folder that holds config.json and *.safetensors, or a .gguf file."
    )


def resolve_under_roots(raw_path: str | Path) -> Path:
    """The resolved path, if it exists under one of KEEL_CHECKPOINT_ROOTS."""
    if not str(raw_path).strip():
        raise CheckpointError("No path given. Give the checkpoint's folder or .gguf file.")
    # The roots first: whether a path outside them exists is none of the caller's business.
    path = Path(raw_path).expanduser().resolve()
    roots = settings.KEEL_CHECKPOINT_ROOTS
    if not any(path.is_relative_to(root) for root in roots):
        listed = ", ".join(str(r) for r in roots)
        raise CheckpointError(
            f"{path} is outside the allowed checkpoint folders ({listed}). Move it under one "
            "of them, or add its folder to KEEL_CHECKPOINT_ROOTS."
        )
    if not path.exists():
        raise CheckpointError(f"{path} does not exist. Check the path and try again.")
    return path


def _inspect_hf_dir(path: Path) -> CheckpointFacts:
    config = _read_json(path / "config.json", what="config.json")
    model_type = config.get("model_type")
    kind, architecture = _supported_architecture(model_type, config)
    weights = tuple(sorted(path.glob("*.safetensors")))
    if not weights:
        pickled = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickled:
            raise CheckpointError(
                f"{path} has only pickle weights ({', '.join(pickled)}); Keel never loads "
                "pickle. Convert them to safetensors (model.save_pretrained(..., "
                "safe_serialization=True)) on a trusted machine and register that folder."
            )
        raise CheckpointError(f"{path} has no *.safetensors weight files.")
    counts: Counter[str] = Counter()
    parameter_count = 0
    for weight in weights:
        for dtype, numel in _safetensors_tensors(weight):
            counts[dtype] += numel
            parameter_count += numel
    tokenizer_config = path / "tokenizer_config.json"
    present = {p.name for p in path.iterdir()}
    if not present & TOKENIZER_FILES:
        raise CheckpointError(
            f"{path} has no tokenizer (none of {', '.join(sorted(TOKENIZER_FILES))}). "
            "Save the tokenizer beside the model (tokenizer.save_pretrained(folder))."
        )
    tok_conf = {}
    if tokenizer_config.exists():
        tok_conf = _read_json(tokenizer_config, "tokenizer_config.json")
    has_template = bool(tok_conf.get("chat_template")) or (path / "chat_template.jinja").exists()
    return CheckpointFacts(
        path=path,
        format="hf",
        weight_files=weights,
        fingerprint=fingerprint(weights),
        architecture=architecture,
        model_type=model_type,
        parameter_count=parameter_count,
        dtype=counts.most_common(1)[0][0].lower() if counts else "unknown",
        has_chat_template=has_template,
        tokenizer=str(tok_conf.get("tokenizer_class") or "from tokenizer.json"),
        kind=kind,
    )


def _inspect_adapter(path: Path) -> CheckpointFacts:
    """A PEFT LoRA adapter folder: adapter_config.json and adapter_model.safetensors.
    It is loaded on its parent checkpoint, which registration names."""
    config = _read_json(path / "adapter_config.json", what="adapter_config.json")
    if config.get("peft_type") != "LORA":
        raise CheckpointError(
            f"{path} holds a {config.get('peft_type')!r} adapter; Keel loads LoRA adapters only."
        )
    weights = path / "adapter_model.safetensors"
    if not weights.exists():
        raise CheckpointError(
            f"{path} has no adapter_model.safetensors (Keel never loads pickled adapter "
            "weights). Save the adapter with safe_serialization=True."
        )
    tensors = _safetensors_tensors(weights)
    targets = config.get("target_modules") or []
    counts: Counter[str] = Counter()
    for dtype, numel in tensors:
        counts[dtype] += numel
    return CheckpointFacts(
        path=path,
        format="peft",
        weight_files=(weights,),
        fingerprint=fingerprint((weights,)),
        architecture=f"LoRA r={config.get('r')} on {', '.join(sorted(targets))}",
        model_type="lora",
        parameter_count=sum(n for _, n in tensors),
        dtype=counts.most_common(1)[0][0].lower() if counts else "unknown",
        has_chat_template=False,
        tokenizer="from its parent",
    )


def _supported_architecture(model_type: object, config: dict) -> tuple[str, str]:
    """("policy" or "reward", architecture) for a model transformers builds without
    remote code: a causal LM, or a sequence classifier with one output."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    architectures = config.get("architectures")
    first = str(architectures[0]) if isinstance(architectures, list) and architectures else ""
    if (
        first.endswith("ForSequenceClassification")
        and model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    ):
        labels = len(config.get("id2label") or {}) or config.get("num_labels", 2)
        if labels != 1:
            raise CheckpointError(
                f"This classifier has {labels} outputs; a reward model has exactly one "
                "(num_labels=1)."
            )
        return "reward", first
    return "policy", _supported_causal_lm(model_type, architectures)


def _supported_causal_lm(model_type: object, architectures: object) -> str:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not isinstance(model_type, str) or not model_type:
        raise CheckpointError("config.json has no model_type, so transformers cannot load it.")
    if model_type not in CONFIG_MAPPING_NAMES:
        raise CheckpointError(
            f"model_type {model_type!r} is not built into transformers; Keel never runs "
            "remote code. Use a checkpoint of an architecture transformers supports."
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise CheckpointError(
            f"model_type {model_type!r} is not a causal language model; Keel audits "
            "chat and text-generation models (and uses one-output sequence classifiers as "
            "reward models)."
        )
    if isinstance(architectures, list) and architectures:
        return str(architectures[0])
    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]


def _read_json(path: Path, what: str) -> dict:
    if not path.exists():
        raise CheckpointError(
            f"{path.parent} has no {what}; it does not look like a Hugging Face model folder."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}). Is the file corrupt?") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object.")
    return data


def _safetensors_tensors(path: Path) -> list[tuple[str, int]]:
    """(dtype, element count) of each tensor, checked against the file's size."""
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len <= 0 or 8 + header_len > size:
                raise ValueError("header length runs past the end of the file")
            header = json.loads(f.read(header_len))
        tensors = []
        data_end = 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            numel = 1
            for dim in shape:
                numel *= int(dim)
            if end - start != numel * SAFETENSORS_DTYPES[dtype]:
                raise ValueError(f"tensor {name} has the wrong byte size")
            data_end = max(data_end, end)
            tensors.append((dtype, numel))
        if 8 + header_len + data_end != size:
            raise ValueError("file size does not match its header (truncated?)")
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path.name} is not a valid safetensors file: {exc}.") from None
    return tensors


def _inspect_gguf(path: Path) -> CheckpointFacts:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the reader raises many kinds on a damaged file
        raise CheckpointError(f"{path.name} is not a valid GGUF file: {exc}.") from None

    def field(key: str) -> str | None:
        f = reader.fields.get(key)
        return None if f is None else str(f.contents())

    arch = field("general.architecture")
    if not arch:
        raise CheckpointError(f"{path.name} has no general.architecture; is it a model GGUF?")
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    supported = sorted(set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"})
    if arch not in supported:
        raise CheckpointError(
            f"GGUF architecture {arch!r} cannot be loaded by transformers "
            f"(supported: {', '.join(supported)})."
        )
    if field("tokenizer.ggml.model") is None:
        raise CheckpointError(f"{path.name} carries no tokenizer (tokenizer.ggml.model).")
    types: Counter[str] = Counter()
    parameter_count = 0
    for tensor in reader.tensors:
        types[tensor.tensor_type.name.lower()] += int(tensor.n_elements)
        parameter_count += int(tensor.n_elements)
    return CheckpointFacts(
        path=path,
        format="gguf",
        weight_files=(path,),
        fingerprint=fingerprint((path,)),
        architecture=arch,
        model_type=arch,
        parameter_count=parameter_count,
        dtype=types.most_common(1)[0][0] if types else "unknown",
        has_chat_template=field("tokenizer.chat_template") is not None,
        tokenizer=field("tokenizer.ggml.model") or "",
    )


def fingerprint(weight_files: tuple[Path, ...]) -> str:
    """sha256 over the weight files' names and bytes, in name order."""
    digest = hashlib.sha256()
    for weight in sorted(weight_files, key=lambda p: p.name):
        digest.update(weight.name.encode() + b"\0")
        with weight.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()
