from __future__ import annotations

from django import forms

from models_registry.inspection import CheckpointError
from models_registry.services import checkpoint_register


class RegisterCheckpointForm(forms.Form):
    path = forms.CharField(
        max_length=1000,
        help_text="A Hugging Face model folder (config.json, *.safetensors, tokenizer) "
        "or a .gguf file, under one of the allowed checkpoint folders.",
    )
    name = forms.SlugField(max_length=100, help_text="Lower-case letters, digits, hyphens.")
    notes = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)

    def save(self, user):
        """Register, turning refusals into form errors; returns the checkpoint or None."""
        try:
            return checkpoint_register(
                path=self.cleaned_data["path"],
                name=self.cleaned_data["name"],
                notes=self.cleaned_data["notes"],
                user=user,
            )
        except CheckpointError as exc:
            self.add_error(None, str(exc))
            return None
