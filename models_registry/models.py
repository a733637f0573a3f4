from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse

from models_registry.roles import can_read


class CheckpointFormat(models.TextChoices):
    HF = "hf", "Hugging Face folder (safetensors)"
    GGUF = "gguf", "GGUF file"
    PEFT = "peft", "LoRA adapter on its parent (safetensors)"


class CheckpointKind(models.TextChoices):
    POLICY = "policy", "Language model"
    REWARD = "reward", "Reward model (sequence classifier, one output)"


class CheckpointQuerySet(models.QuerySet["Checkpoint"]):
    def for_user(self, user) -> CheckpointQuerySet:
        """Every role reads the whole registry; a user without a role reads none of it."""
        return self if can_read(user) else self.none()


class Checkpoint(models.Model):
    """A model on disk, registered once and immutable after."""

    name = models.SlugField(max_length=100, unique=True)
    path = models.CharField(max_length=1000)
    format = models.CharField(max_length=8, choices=CheckpointFormat.choices)
    kind = models.CharField(
        max_length=10, choices=CheckpointKind.choices, default=CheckpointKind.POLICY
    )
    fingerprint = models.CharField(max_length=64, unique=True, help_text="sha256 of weight files")
    architecture = models.CharField(max_length=100)
    model_type = models.CharField(max_length=50)
    parameter_count = models.BigIntegerField()
    dtype = models.CharField(max_length=20)
    has_chat_template = models.BooleanField()
    tokenizer = models.CharField(max_length=200, blank=True)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="variants"
    )
    tags = models.JSONField(default=list, blank=True)
    training = models.JSONField(
        default=dict, blank=True, help_text="for variants Keel trained: config, curves, time"
    )
    notes = models.TextField(blank=True)
    registered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    registered_at = models.DateTimeField(auto_now_add=True)

    objects = CheckpointQuerySet.as_manager()

    class Meta:
        ordering = ["-registered_at"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("registry:detail", args=[self.name])

    def lineage(self) -> list[Checkpoint]:
        """This checkpoint and its ancestors, root first."""
        chain = [self]
        while chain[0].parent_id is not None:
            chain.insert(0, chain[0].parent)
        return chain

    def family(self) -> list[Checkpoint]:
        """The root of this checkpoint's lineage and every descendant of that root, root
        first, then in the order they were registered: one query however deep."""
        table = self._meta.db_table
        return list(Checkpoint.objects.raw(
            f"""WITH RECURSIVE up(id, parent_id) AS (
                    SELECT id, parent_id FROM {table} WHERE id = %s
                    UNION ALL SELECT c.id, c.parent_id FROM {table} c JOIN up ON c.id = up.parent_id
                ), down(id) AS (
                    SELECT id FROM up WHERE parent_id IS NULL
                    UNION ALL SELECT c.id FROM {table} c JOIN down ON c.parent_id = down.id
                )
                SELECT t.* FROM {table} t JOIN down ON t.id = down.id
                ORDER BY t.parent_id IS NOT NULL, t.registered_at, t.id""",  # noqa: S608
            [self.pk],
        ))  # fmt: skip

    @property
    def parameters_human(self) -> str:
        n = self.parameter_count
        for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if n >= size:
                return f"{n / size:.1f}{unit}"
        return str(n)


class Alias(models.Model):
    """A moving name for one checkpoint, e.g. `production` or `candidate`: checkpoints are
    immutable, so releases move an alias instead."""

    name = models.SlugField(max_length=50, unique=True)
    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.CASCADE, related_name="aliases")
    set_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    set_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "aliases"

    def __str__(self) -> str:
        return f"{self.name} → {self.checkpoint}"
