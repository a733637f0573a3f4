from __future__ import annotations

from django import forms
from django.contrib import admin

from audits.trail import Action, record
from models_registry.inspection import CheckpointError
from models_registry.models import Alias, Checkpoint
from models_registry.roles import can_operate
from models_registry.services import checkpoint_fields, inspect_new_checkpoint


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
            self.facts = inspect_new_checkpoint(cleaned["path"])
        except CheckpointError as exc:
            raise forms.ValidationError(str(exc)) from None
        return cleaned

    def save(self, commit=True):
        checkpoint = super().save(commit=False)
        for field, value in checkpoint_fields(self.facts).items():
            setattr(checkpoint, field, value)
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
        """Recorded in the audit log: a registration as from the command or the web form, an
        edit of notes or tags with the values before and after."""
        if not change:
            obj.registered_by = request.user
            super().save_model(request, obj, form, change)
            record(Action.REGISTER, obj, details={
                "path": obj.path, "fingerprint": obj.fingerprint, "format": obj.format,
                "kind": obj.kind, "parent": obj.parent.name if obj.parent else None,
            })  # fmt: skip
            return
        super().save_model(request, obj, form, change)
        changed = {
            field: {"before": form.initial.get(field), "after": form.cleaned_data.get(field)}
            for field in form.changed_data
        }
        if changed:
            record(Action.EDIT, obj, details={"changed": changed, "via": "admin"})

    def has_add_permission(self, request):
        return can_operate(request.user)

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Alias)
class AliasAdmin(admin.ModelAdmin):
    """Moving or removing an alias here is recorded in the audit log, as on Keel's pages."""

    list_display = ["name", "checkpoint", "set_by", "set_at"]
    readonly_fields = ["set_by", "set_at"]

    def save_model(self, request, obj, form, change):
        obj.set_by = request.user
        super().save_model(request, obj, form, change)
        record(Action.ALIAS, obj.checkpoint, details={"alias": obj.name, "via": "admin"})

    def delete_model(self, request, obj):
        record(Action.ALIAS, obj.checkpoint, details={"alias": obj.name, "removed": True,
                                                      "via": "admin"})  # fmt: skip
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for alias in queryset.select_related("checkpoint"):
            self.delete_model(request, alias)
