from __future__ import annotations

import re

from django import forms

from models_registry.inspection import CheckpointError
from models_registry.services import checkpoint_register

TAG = re.compile(r"[\w.-]{1,50}")


class RegisterCheckpointForm(forms.Form):
    path = forms.CharField(
        max_length=1000,
        help_text="A Hugging Face model folder (config.json, *.safetensors, tokenizer) "
        "or a .gguf file, under one of the allowed checkpoint folders.",
    )
    name = forms.SlugField(max_length=100, help_text="Lower-case letters, digits, hyphens.")
    tags = forms.CharField(
        max_length=500,
        required=False,
        help_text="Comma-separated labels to search and filter by, e.g. release-3, distilled.",
    )
    notes = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)

    def clean_tags(self) -> list[str]:
        tags = [t.strip() for t in self.cleaned_data["tags"].split(",") if t.strip()]
        bad = [t for t in tags if not TAG.fullmatch(t)]
        if bad:
            raise forms.ValidationError(
                f"Tags may hold letters, digits, dots, hyphens and underscores (up to 50): "
                f"fix {', '.join(repr(t) for t in bad)}."
            )
        return list(dict.fromkeys(tags))

    def save(self, user):
        """Register, turning refusals into form errors; returns the checkpoint or None."""
        try:
            return checkpoint_register(
                path=self.cleaned_data["path"],
                name=self.cleaned_data["name"],
                notes=self.cleaned_data["notes"],
                tags=self.cleaned_data["tags"],
                user=user,
            )
        except CheckpointError as exc:
            self.add_error(None, str(exc))
            return None


class AliasForm(forms.Form):
    name = forms.SlugField(
        max_length=50,
        label="Alias",
        help_text="A moving name such as production or candidate; setting it here moves it "
        "from whichever checkpoint held it.",
    )
