from __future__ import annotations

from django import forms

from audits.models import Profile, Suite
from models_registry.models import Checkpoint


class AuditForm(forms.Form):
    checkpoint = forms.ModelChoiceField(queryset=Checkpoint.objects.all(), to_field_name="name")
    suites = forms.ModelMultipleChoiceField(
        queryset=Suite.objects.all(), widget=forms.CheckboxSelectMultiple
    )
    profile = forms.ChoiceField(choices=Profile.choices, initial=Profile.QUICK)
    seed = forms.IntegerField(initial=0, min_value=0, max_value=2**31 - 1)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        latest = {}
        for suite in Suite.objects.order_by("name", "-version"):
            latest.setdefault(suite.name, suite.pk)
        self.fields["suites"].queryset = Suite.objects.filter(pk__in=latest.values())
        self.fields["suites"].initial = list(latest.values())
