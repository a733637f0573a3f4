from __future__ import annotations

from pathlib import Path

from django.db import IntegrityError, transaction
from django.utils.text import slugify

from audits.trail import Action, record
from models_registry.inspection import CheckpointError, CheckpointFacts, inspect_checkpoint
from models_registry.models import Checkpoint


def validate_checkpoint_name(name: str) -> str:
    if not name or slugify(name) != name:
        raise CheckpointError(
            f"Name {name!r} is not allowed: use lower-case letters, digits and hyphens "
            f"(for example {slugify(name) or 'my-model-v2'!r})."
        )
    if Checkpoint.objects.filter(name=name).exists():
        raise CheckpointError(f"A checkpoint named {name!r} already exists; choose another name.")
    return name


def inspect_new_checkpoint(path: str | Path) -> CheckpointFacts:
    """The checkpoint's facts, if it is valid and its weights are not registered yet."""
    facts = inspect_checkpoint(path)
    existing = Checkpoint.objects.filter(fingerprint=facts.fingerprint).first()
    if existing is not None:
        raise CheckpointError(
            f"These weights are already registered as {existing.name!r} (fingerprint "
            f"{facts.fingerprint[:12]}…). Use that checkpoint, or add an alias to it."
        )
    return facts


def checkpoint_fields(facts: CheckpointFacts) -> dict:
    """What a Checkpoint row records from the files."""
    return {
        "path": str(facts.path), "format": facts.format, "fingerprint": facts.fingerprint,
        "architecture": facts.architecture, "model_type": facts.model_type,
        "parameter_count": facts.parameter_count, "dtype": facts.dtype,
        "has_chat_template": facts.has_chat_template, "tokenizer": facts.tokenizer,
        "kind": facts.kind,
    }  # fmt: skip


@transaction.atomic
def checkpoint_register(
    *,
    path: str | Path,
    name: str,
    user=None,
    notes: str = "",
    tags: list[str] | None = None,
    parent: Checkpoint | None = None,
    training: dict | None = None,
) -> Checkpoint:
    """Validate a checkpoint on disk and store it; on any error, store nothing.
    A LoRA adapter needs its ``parent``, the checkpoint it was trained on."""
    validate_checkpoint_name(name)
    facts = inspect_new_checkpoint(path)
    if facts.format == "peft" and (parent is None or parent.kind != "policy"):
        raise CheckpointError(
            f"{path} is a LoRA adapter: register it with the language model it was trained "
            "on as its parent."
        )
    fields = checkpoint_fields(facts)
    if facts.format == "peft":  # an adapter talks through its parent's tokenizer
        fields["has_chat_template"] = parent.has_chat_template
    try:
        checkpoint = Checkpoint.objects.create(
            name=name,
            **fields,
            notes=notes,
            tags=tags or [],
            parent=parent,
            training=training or {},
            registered_by=user if user is not None and user.is_authenticated else None,
        )
    except IntegrityError:  # lost a race with a concurrent registration
        raise CheckpointError(f"{name!r} or these weights were registered meanwhile.") from None
    record(Action.REGISTER, checkpoint, actor=user, details={
        "path": checkpoint.path, "fingerprint": checkpoint.fingerprint, "format": checkpoint.format,
        "kind": checkpoint.kind, "parent": parent.name if parent else None,
    })  # fmt: skip
    return checkpoint
