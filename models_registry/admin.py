from __future__ import annotations

from django import forms
from django.contrib import admin

from models_registry.inspection import CheckpointError, inspect_checkpoint
from models_registry.models import Checkpoint
from models_registry.roles import can_operate


class CheckpointAddForm(forms.ModelForm):
    """The admin's add form runs the same validation as the command and the web form."""

    class Meta:
        model = Checkpoint
        fields = ["name", "path", "notes", "tags", "parent"]

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        try:
            facts = inspect_checkpoint(cleaned["path"])
        except CheckpointError as exc:
            raise forms.ValidationError(str(exc)) from None
        clash = Checkpoint.objects.filter(fingerprint=facts.fingerprint).first()
        if clash is not None:
            raise forms.ValidationError(f"These weights are already registered as {clash.name!r}.")
        self.facts = facts
        return cleaned

    def save(self, commit=True):
        checkpoint = super().save(commit=False)
        facts = self.facts
        checkpoint.path = str(facts.path)
        for field in ("format", "fingerprint", "architecture", "model_type", "parameter_count",
                      "dtype", "has_chat_template", "tokenizer"):  # fmt: skip
            setattr(checkpoint, field, getattr(facts, field))
        if commit:
            checkpoint.save()
        return checkpoint


@admin.register(Checkpoint)
class CheckpointAdmin(admin.ModelAdmin):
    list_display = ["name", "architecture", "parameter_count", "dtype", "format", "registered_at"]
    search_fields = ["name", "architecture", "fingerprint"]
    readonly_fields = [
        "format", "fingerprint", "architecture", "model_type", "parameter_count", "dtype",
        "has_chat_template", "tokenizer", "registered_by", "registered_at",
    ]  # fmt: skip

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = CheckpointAddForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        if obj is not None:  # registered checkpoints are immutable but for notes and tags
            return [*self.readonly_fields, "name", "path", "parent"]
        return self.readonly_fields

    def save_model(self, request, obj, form, change):
        if not change:
            obj.registered_by = request.user
        super().save_model(request, obj, form, change)

    def has_add_permission(self, request):
        return can_operate(request.user)

    def has_delete_permission(self, request, obj=None):
        return False
