"""Registering checkpoints: the command, the web form and the admin share one validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from models_registry.inspection import CheckpointError, fingerprint
from models_registry.models import Checkpoint
from models_registry.services import checkpoint_register


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def register_cli(path, name="candidate"):
    with pytest.raises(CommandError) as excinfo:
        call_command("register_checkpoint", str(path), "--name", name)
    assert excinfo.value.returncode == 2
    return str(excinfo.value)


def test_it_registers_a_safetensors_folder_with_its_facts(db, tiny_llama_dir, capsys):
    call_command("register_checkpoint", str(tiny_llama_dir), "--name", "tiny")
    checkpoint = Checkpoint.objects.get(name="tiny")
    assert checkpoint.format == "hf"
    assert checkpoint.architecture == "LlamaForCausalLM"
    assert checkpoint.model_type == "llama"
    # 49152 x 64 tied embedding + 2 layers + final norm
    assert checkpoint.parameter_count == sum(
        p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(
            tiny_llama_dir).parameters()
    )  # fmt: skip
    assert checkpoint.dtype == "f32"
    assert checkpoint.has_chat_template is True
    assert checkpoint.fingerprint == fingerprint((tiny_llama_dir / "model.safetensors",))
    assert "Registered tiny" in capsys.readouterr().out


def test_it_registers_the_bundled_gguf(db, smollm2_gguf, settings):
    settings.KEEL_CHECKPOINT_ROOTS = [smollm2_gguf.parent]
    checkpoint = checkpoint_register(path=smollm2_gguf, name="smollm2-gguf")
    assert checkpoint.format == "gguf"
    assert checkpoint.architecture == "llama"
    assert checkpoint.parameter_count == 134_515_008
    assert checkpoint.dtype == "q4_1"
    assert checkpoint.has_chat_template is True


def test_a_missing_path_is_refused(db, models_root):
    message = register_cli(models_root / "no-such-model")
    assert "does not exist" in message
    assert not Checkpoint.objects.exists()


def test_a_path_outside_the_roots_is_refused(db, tiny_llama_dir, tmp_path):
    outside = copy_model(tiny_llama_dir, tmp_path / "model")
    message = register_cli(outside)
    assert "outside the allowed checkpoint folders" in message
    assert "KEEL_CHECKPOINT_ROOTS" in message
    assert not Checkpoint.objects.exists()


def test_outside_the_roots_whether_a_path_exists_is_not_revealed(db, tiny_llama_dir, tmp_path):
    real = copy_model(tiny_llama_dir, tmp_path / "model")
    said = {register_cli(path).replace(str(path), "PATH") for path in (real, tmp_path / "none")}
    assert len(said) == 1, said
    assert "outside the allowed checkpoint folders" in said.pop()


def test_a_symlink_out_of_the_roots_is_refused(db, tiny_llama_dir, tmp_path, scratch_dir):
    outside = copy_model(tiny_llama_dir, tmp_path / "model")
    (scratch_dir / "link").symlink_to(outside)
    assert "outside the allowed" in register_cli(scratch_dir / "link")


def test_a_folder_that_is_not_a_model_is_refused(db, scratch_dir):
    (scratch_dir / "notes.txt").write_text("hello")
    message = register_cli(scratch_dir)
    assert "has no config.json" in message
    assert not Checkpoint.objects.exists()


def test_a_pickle_only_checkpoint_is_refused(db, tiny_llama_dir, scratch_dir):
    model = copy_model(tiny_llama_dir, scratch_dir / "m")
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    message = register_cli(model)
    assert "only pickle weights (pytorch_model.bin)" in message
    assert "never loads pickle" in message
    assert not Checkpoint.objects.exists()


def test_a_truncated_safetensors_file_is_refused(db, tiny_llama_dir, scratch_dir):
    model = copy_model(tiny_llama_dir, scratch_dir / "m")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    message = register_cli(model)
    assert "model.safetensors is not a valid safetensors file" in message
    assert not Checkpoint.objects.exists()


def test_garbage_in_a_safetensors_file_is_refused(db, tiny_llama_dir, scratch_dir):
    model = copy_model(tiny_llama_dir, scratch_dir / "m")
    (model / "model.safetensors").write_bytes(b"\xff" * 64)
    assert "not a valid safetensors file" in register_cli(model)


def test_a_corrupt_config_is_refused(db, tiny_llama_dir, scratch_dir):
    model = copy_model(tiny_llama_dir, scratch_dir / "m")
    (model / "config.json").write_text("{not json")
    assert "config.json is not valid JSON" in register_cli(model)


def test_an_unknown_architecture_is_refused(db, tiny_llama_dir, scratch_dir):
    model = copy_model(tiny_llama_dir, scratch_dir / "m")
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "my_custom_llm"
    (model / "config.json").write_text(json.dumps(config))
    message = register_cli(model)
    assert "'my_custom_llm' is not built into transformers" in message
    assert "never runs remote code" in message


def test_a_missing_tokenizer_is_refused(db, tiny_llama_dir, scratch_dir):
    model = copy_model(tiny_llama_dir, scratch_dir / "m")
    (model / "tokenizer.json").unlink()
    assert "has no tokenizer" in register_cli(model)


def test_a_corrupt_gguf_is_refused(db, scratch_dir):
    bad = scratch_dir / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 100)
    message = register_cli(bad)
    assert "broken.gguf is not a valid GGUF file" in message


def test_a_duplicate_fingerprint_is_refused_and_the_first_kept(db, tiny_llama_dir, scratch_dir):
    call_command("register_checkpoint", str(tiny_llama_dir), "--name", "first")
    again = copy_model(tiny_llama_dir, scratch_dir / "copy")
    message = register_cli(again, name="second")
    assert "already registered as 'first'" in message
    assert list(Checkpoint.objects.values_list("name", flat=True)) == ["first"]


def test_a_bad_or_taken_name_is_refused(db, tiny_llama_dir):
    assert "not allowed" in register_cli(tiny_llama_dir, name="Bad Name!")
    call_command("register_checkpoint", str(tiny_llama_dir), "--name", "taken")
    assert "already exists" in register_cli(tiny_llama_dir, name="taken")


def test_the_service_raises_a_checkpoint_error_for_an_empty_path(db):
    with pytest.raises(CheckpointError, match="No path given"):
        checkpoint_register(path="", name="x")


def test_an_operator_registers_through_the_web_form(client, operator, tiny_llama_dir):
    client.force_login(operator)
    response = client.post(
        reverse("registry:register"), {"path": str(tiny_llama_dir), "name": "web-tiny"}
    )
    assert response.status_code == 302
    checkpoint = Checkpoint.objects.get(name="web-tiny")
    assert checkpoint.registered_by == operator
    assert response.url == checkpoint.get_absolute_url()


def test_the_web_form_shows_the_refusal_and_stores_nothing(client, operator, scratch_dir):
    client.force_login(operator)
    (scratch_dir / "notes.txt").write_text("hello")
    response = client.post(reverse("registry:register"), {"path": str(scratch_dir), "name": "x"})
    assert response.status_code == 200
    assert "has no config.json" in response.content.decode()
    assert not Checkpoint.objects.exists()


def test_a_viewer_cannot_register(client, viewer, tiny_llama_dir):
    client.force_login(viewer)
    response = client.post(reverse("registry:register"), {"path": str(tiny_llama_dir), "name": "v"})
    assert response.status_code == 403
    assert not Checkpoint.objects.exists()


def test_the_admin_add_form_validates_the_same_way(client, site_admin, tiny_llama_dir, scratch_dir):
    site_admin.is_staff = True
    site_admin.save()
    client.force_login(site_admin)
    url = reverse("admin:models_registry_checkpoint_add")
    (scratch_dir / "m.bin").write_bytes(b"\x80\x04")
    refused = client.post(url, {"name": "bad", "path": str(scratch_dir), "tags": "[]"})
    assert refused.status_code == 200
    assert "has no config.json" in refused.content.decode()
    accepted = client.post(url, {"name": "good", "path": str(tiny_llama_dir), "tags": "[]"})
    assert accepted.status_code == 302
    assert Checkpoint.objects.get(name="good").architecture == "LlamaForCausalLM"


def build_adapter(base_dir: Path, target: Path) -> Path:
    """A LoRA adapter saved by PEFT, as Keel's trainer saves one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(target, safe_serialization=True)
    return target


def test_a_lora_adapter_registers_on_its_parent_and_only_with_one(
    db, tiny_llama_dir, scratch_dir, tiny_checkpoint
):
    adapter = build_adapter(tiny_llama_dir, scratch_dir / "adapter")
    assert "parent" in register_cli(adapter)
    assert not Checkpoint.objects.filter(name="candidate").exists()
    call_command("register_checkpoint", str(adapter), "--name", "variant", "--parent",
                 tiny_checkpoint.name)  # fmt: skip
    variant = Checkpoint.objects.get(name="variant")
    assert variant.format == "peft" and variant.parent == tiny_checkpoint
    assert variant.has_chat_template == tiny_checkpoint.has_chat_template
    assert variant.architecture == "LoRA r=4 on q_proj, v_proj"
    # per layer, A (r x 64) and B (out x r) for q (out 64) and v (2 kv heads x 16 = 32)
    assert variant.parameter_count == 2 * (4 * 64 + 64 * 4 + 4 * 64 + 32 * 4)
    assert variant.lineage() == [tiny_checkpoint, variant]


def test_a_pickled_or_non_lora_adapter_is_refused(db, tiny_llama_dir, scratch_dir):
    adapter = build_adapter(tiny_llama_dir, scratch_dir / "adapter")
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    assert "never loads pickled" in register_cli(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(config | {"peft_type": "IA3"}))
    assert "LoRA adapters only" in register_cli(adapter)


@pytest.mark.parametrize(("labels", "accepted"), [(1, True), (2, False)])
def test_a_one_output_classifier_registers_as_a_reward_model(
    db, smollm2_tokenizer_dir, scratch_dir, labels, accepted
):
    from tests.gpu_tasks.test_graders import build_reward_model

    path = build_reward_model(scratch_dir / "rm", smollm2_tokenizer_dir, labels=labels)
    if accepted:
        call_command("register_checkpoint", str(path), "--name", "rm")
        assert Checkpoint.objects.get(name="rm").kind == "reward"
    else:
        assert "exactly one" in register_cli(path)
