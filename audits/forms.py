from __future__ import annotations

from django import forms

from audits.builtin import DEMO_SUITE
from audits.conditions import CONDITIONS, NEUTRAL
from audits.models import Profile, Suite
from models_registry.models import Checkpoint


class AuditForm(forms.Form):
    checkpoint = forms.ModelChoiceField(queryset=Checkpoint.objects.all(), to_field_name="name")
    suites = forms.ModelMultipleChoiceField(
        queryset=Suite.objects.all(), widget=forms.CheckboxSelectMultiple
    )
    conditions = forms.MultipleChoiceField(
        choices=[(c.name, f"{c.name}: {c.description}") for c in CONDITIONS.values()
                 if c.kind != "helpful"],
        initial=[NEUTRAL],
        widget=forms.CheckboxSelectMultiple,
        help_text="Each item is scored under each condition chosen. Helpful-instruction items "
        "are always scored under their own instruction.",
    )  # fmt: skip
    profile = forms.ChoiceField(choices=Profile.choices, initial=Profile.QUICK)
    seed = forms.IntegerField(initial=0, min_value=0, max_value=2**31 - 1)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        newest = Suite.objects.newest_versions()
        self.fields["suites"].queryset = newest
        demo = newest.filter(name=DEMO_SUITE).values_list("pk", flat=True)
        self.fields["suites"].initial = list(demo)
