"""Shared fixtures: tiny random Llama checkpoints with SmolLM2's tokenizer, users by role."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User

from models_registry.roles import ADMIN, COMPLIANCE, OPERATOR, VIEWER

# Kept between runs: converting the bundled GGUF takes ~40 s, building a tiny model ~1 s.
MODELS_ROOT = Path(settings.KEEL_DATA_DIR) / "test-models"


@pytest.fixture(scope="session")
def models_root() -> Path:
    MODELS_ROOT.mkdir(parents=True, exist_ok=True)
    return MODELS_ROOT.resolve()


@pytest.fixture(autouse=True, scope="session")
def _fp32():
    """Scores are compared with fp32 references; "auto" would pick bf16 on CPUs where it is
    fast, and decides by timing a matmul, which a busy machine can tip either way. Session
    scope, so that models loaded by module-scoped fixtures are fp32 too."""
    settings.KEEL_DTYPE = "float32"


@pytest.fixture(autouse=True)
def _checkpoint_roots(settings, models_root):
    settings.KEEL_CHECKPOINT_ROOTS = [models_root]


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from gpu_tasks.engine.convert import bundled_smollm2_gguf

    return bundled_smollm2_gguf()


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(models_root, smollm2_gguf) -> Path:
    target = models_root / "smollm2-tokenizer"
    if not (target / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            smollm2_gguf.parent, gguf_file=smollm2_gguf.name, local_files_only=True
        )
        tokenizer.save_pretrained(target)
    return target


def build_tiny_llama(target: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer and chat template: builds in a second."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.save_pretrained(target, safe_serialization=True)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, target / f.name)
    return target


@pytest.fixture(scope="session")
def tiny_llama_dir(models_root, smollm2_tokenizer_dir) -> Path:
    target = models_root / "tiny-llama"
    if not (target / "model.safetensors").exists():
        build_tiny_llama(target, smollm2_tokenizer_dir)
    return target


@pytest.fixture(scope="session")
def smollm2_dir(models_root, smollm2_gguf) -> Path:
    from gpu_tasks.engine.convert import gguf_to_safetensors

    return gguf_to_safetensors(smollm2_gguf, models_root / "smollm2-135m-instruct")


@pytest.fixture
def scratch_dir(models_root):
    """A fresh folder under the allowed checkpoint root, removed afterwards."""
    path = models_root / "scratch" / uuid.uuid4().hex
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_user(username: str, role: str | None) -> User:
    user = User.objects.create_user(username=username, password="pw-for-tests-only")
    if role:
        # get_or_create: transactional tests flush the groups the data migration made
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user


@pytest.fixture
def viewer(db) -> User:
    return make_user("vera-viewer", VIEWER)


@pytest.fixture
def operator(db) -> User:
    return make_user("otto-operator", OPERATOR)


@pytest.fixture
def compliance(db) -> User:
    return make_user("cora-compliance", COMPLIANCE)


@pytest.fixture
def site_admin(db) -> User:
    return make_user("ada-admin", ADMIN)


@pytest.fixture
def starter_suite(db):
    from audits.builtin import load_keel_suite

    return load_keel_suite("starter")


@pytest.fixture
def tiny_checkpoint(db, tiny_llama_dir):
    from models_registry.services import checkpoint_register

    return checkpoint_register(path=tiny_llama_dir, name="tiny-llama")
