from __future__ import annotations

from django import forms
from django.conf import settings

from audits.builtin import DEFAULT_SUITES, reserved_suite_names
from audits.conditions import CONDITIONS
from audits.models import DOMAINS, TRAITS, Plan, Priority, Profile, Suite
from audits.profiles import QUICK_CONDITIONS
from audits.services import MAX_SAMPLES
from audits.suite_io import SuiteError, check_size, parse_file, suite_store
from gpu_tasks.engine.methods import METHODS
from models_registry.models import Checkpoint, CheckpointKind


class AuditForm(forms.Form):
    TRAINING = ("method", "traits", "train_domains")
    field_order = ["checkpoint", "plan", "suites", "conditions", "profile", "seed", "priority",
                   "samples", "judge", "reward_model", *TRAINING]  # fmt: skip

    @property
    def general_fields(self):
        return [f for f in self if f.name not in self.TRAINING]

    @property
    def training_fields(self):
        return [f for f in self if f.name in self.TRAINING]

    checkpoint = forms.ModelChoiceField(queryset=Checkpoint.objects.all(), to_field_name="name")
    suites = forms.ModelMultipleChoiceField(
        queryset=Suite.objects.all(), widget=forms.CheckboxSelectMultiple
    )
    conditions = forms.MultipleChoiceField(
        choices=[(c.name, f"{c.name}: {c.description}") for c in CONDITIONS.values()
                 if c.kind != "helpful"],
        initial=list(QUICK_CONDITIONS),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Each item is scored under each condition chosen; none chosen means the "
        "profile's own (full: every persona). Helpful-instruction items are always scored "
        "under their own instruction.",
    )  # fmt: skip
    profile = forms.ChoiceField(choices=Profile.choices, initial=Profile.QUICK)
    seed = forms.IntegerField(initial=0, min_value=0, max_value=2**31 - 1)
    priority = forms.TypedChoiceField(
        choices=Priority.choices, coerce=int, initial=Priority.NORMAL, required=False,
        empty_value=Priority.NORMAL,
        help_text="Queued runs of higher priority are taken first (with Redis as the broker).",
    )  # fmt: skip
    samples = forms.IntegerField(
        initial=1, min_value=0, max_value=MAX_SAMPLES, required=False,
        help_text="Replies sampled per generative item and graded (0: log-likelihood only).",
    )  # fmt: skip
    judge = forms.ModelChoiceField(
        queryset=Checkpoint.objects.all(), to_field_name="name", required=False,
        help_text="An instruct checkpoint that grades each rubric criterion by P(Yes).",
    )  # fmt: skip
    reward_model = forms.ModelChoiceField(
        queryset=Checkpoint.objects.all(), to_field_name="name", required=False,
        help_text="A reward model (sequence classifier) that also grades sampled replies.",
    )  # fmt: skip

    plan = forms.ChoiceField(choices=Plan.choices, initial=Plan.EVALUATE, required=False)
    method = forms.ChoiceField(
        choices=[(m, m.upper()) for m in METHODS], initial="dpo", required=False,
        help_text="Training a variant: DPO on preference pairs, SFT on the chosen replies, or "
        "GRPO against a trait reward model plus the rubric rules.",
    )  # fmt: skip
    traits = forms.MultipleChoiceField(
        choices=[(t, t.replace("_", " ")) for t in TRAITS], initial=list(TRAITS),
        required=False, widget=forms.CheckboxSelectMultiple,
    )  # fmt: skip
    train_domains = forms.MultipleChoiceField(
        choices=[(d, d.replace("_", " ")) for d in DOMAINS], required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Training a variant: domains whose train split it learns from; every "
        "domain is evaluated, so the others measure transfer.",
    )  # fmt: skip

    def clean_samples(self):
        samples = self.cleaned_data["samples"]
        return 1 if samples is None else samples

    def clean_plan(self):
        return self.cleaned_data["plan"] or Plan.EVALUATE

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("plan") == Plan.TRAIN_AND_EVALUATE and not cleaned.get("train_domains"):
            self.add_error("train_domains", "Choose at least one domain to train on.")
        return cleaned

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        newest = Suite.objects.newest_versions()
        self.fields["suites"].queryset = newest
        defaults = newest.filter(name__in=DEFAULT_SUITES).values_list("pk", flat=True)
        self.fields["suites"].initial = list(defaults)
        self.fields["judge"].initial = settings.KEEL_DEFAULT_CHECKPOINT
        self.fields["checkpoint"].initial = settings.KEEL_DEFAULT_CHECKPOINT
        policies = Checkpoint.objects.filter(kind=CheckpointKind.POLICY)
        self.fields["checkpoint"].queryset = policies
        self.fields["judge"].queryset = policies
        self.fields["reward_model"].queryset = Checkpoint.objects.filter(kind=CheckpointKind.REWARD)


class SuiteImportForm(forms.Form):
    file = forms.FileField(help_text="A .jsonl or .csv file in Keel's item format.")
    name = forms.SlugField(
        max_length=100, help_text="Importing again under the same name adds a version."
    )
    license = forms.CharField(max_length=100, initial="unspecified")
    source = forms.CharField(max_length=200, initial="user import")

    def clean_name(self):
        name = self.cleaned_data["name"]
        if name in reserved_suite_names():
            raise forms.ValidationError(f"{name!r} is a built-in suite's name; choose another.")
        return name

    def save(self, user):
        """Validate the whole file and store it, or add every problem as a form error."""
        upload = self.cleaned_data["file"]
        try:
            check_size(upload.size, upload.name)  # before reading it into memory
            parsed = parse_file(upload.read(), upload.name)
        except SuiteError as exc:
            for problem in exc.problems:
                self.add_error("file", problem)
            return None
        return suite_store(
            name=self.cleaned_data["name"], parsed=parsed, description="",
            source=self.cleaned_data["source"], license=self.cleaned_data["license"], user=user,
        )  # fmt: skip
