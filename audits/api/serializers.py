from __future__ import annotations

from rest_framework import serializers

from audits.conditions import CONDITIONS
from audits.models import DOMAINS, TRAITS, Audit, Event, Plan, Priority, Profile, Run, Score, Suite
from audits.services import MAX_SAMPLES
from gpu_tasks.engine.methods import METHODS
from models_registry.forms import TAG
from models_registry.models import Checkpoint


class CheckpointSerializer(serializers.ModelSerializer):
    parent = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    registered_by = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    aliases = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)

    class Meta:
        model = Checkpoint
        fields = ["name", "kind", "format", "fingerprint", "architecture", "model_type",
                  "parameter_count", "dtype", "has_chat_template", "parent", "tags", "aliases",
                  "notes", "registered_by", "registered_at"]  # fmt: skip


class CheckpointRegisterSerializer(serializers.Serializer):
    path = serializers.CharField(max_length=1000, help_text="folder or .gguf file under a root")
    name = serializers.SlugField(max_length=100)
    tags = serializers.ListField(
        child=serializers.RegexField(TAG.pattern, max_length=50), required=False, max_length=50
    )
    notes = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
    parent = serializers.SlugRelatedField(
        slug_field="name", queryset=Checkpoint.objects.all(), required=False, allow_null=True
    )


class SuiteSerializer(serializers.ModelSerializer):
    items = serializers.IntegerField(source="n_items", read_only=True)

    class Meta:
        model = Suite
        fields = ["id", "name", "version", "content_hash", "description", "source", "license",
                  "items", "created_at"]  # fmt: skip


class SuiteImportSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="a .jsonl or .csv file in Keel's item format")
    name = serializers.SlugField(max_length=100)
    license = serializers.CharField(max_length=100, default="unspecified")
    source = serializers.CharField(max_length=200, default="user import")


class RunSerializer(serializers.ModelSerializer):
    checkpoint = serializers.SlugRelatedField(slug_field="name", read_only=True)
    percent = serializers.IntegerField(read_only=True)

    class Meta:
        model = Run
        fields = ["id", "kind", "checkpoint", "status", "stage", "progress_done",
                  "progress_total", "percent", "attempts", "worker", "device", "error",
                  "started_at", "finished_at"]  # fmt: skip


class AuditSerializer(serializers.ModelSerializer):
    checkpoint = serializers.SlugRelatedField(slug_field="name", read_only=True)
    created_by = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    suites = serializers.StringRelatedField(many=True, read_only=True)
    runs = RunSerializer(many=True, read_only=True)

    class Meta:
        model = Audit
        fields = ["id", "checkpoint", "plan", "profile", "seed", "priority", "conditions", "suites",
                  "status", "config_hash", "created_by", "created_at", "finished_at",
                  "runs"]  # fmt: skip


def _checkpoint_field(**kwargs):
    return serializers.SlugRelatedField(
        slug_field="name", queryset=Checkpoint.objects.all(), **kwargs
    )


class AuditCreateSerializer(serializers.Serializer):
    checkpoint = _checkpoint_field()
    suites = serializers.ListField(
        child=serializers.SlugField(), min_length=1, max_length=50,
        help_text="suite names; each uses its newest version",
    )  # fmt: skip
    conditions = serializers.ListField(
        child=serializers.ChoiceField(choices=sorted(CONDITIONS)), required=False, max_length=50
    )
    profile = serializers.ChoiceField(choices=Profile.values, default=Profile.QUICK)
    seed = serializers.IntegerField(min_value=0, max_value=2**31 - 1, default=0)
    priority = serializers.ChoiceField(
        choices=Priority.choices, default=Priority.NORMAL,
        help_text="0 high, 3 normal, 6 low: queued runs of higher priority are taken first",
    )  # fmt: skip
    samples = serializers.IntegerField(min_value=0, max_value=MAX_SAMPLES, default=1)
    judge = _checkpoint_field(required=False, allow_null=True)
    reward_model = _checkpoint_field(required=False, allow_null=True)
    plan = serializers.ChoiceField(choices=Plan.values, default=Plan.EVALUATE)
    method = serializers.ChoiceField(choices=list(METHODS), default="dpo")
    traits = serializers.ListField(
        child=serializers.ChoiceField(choices=TRAITS), required=False, max_length=len(TRAITS)
    )
    train_domains = serializers.ListField(
        child=serializers.ChoiceField(choices=DOMAINS), required=False, max_length=len(DOMAINS)
    )

    def validate_suites(self, names: list[str]) -> list[Suite]:
        newest = {s.name: s for s in Suite.objects.newest_versions().filter(name__in=names)}
        missing = sorted(set(names) - set(newest))
        if missing:
            raise serializers.ValidationError(
                f"no suite named {', '.join(missing)}; GET /api/v1/suites/ lists them"
            )
        return [newest[n] for n in dict.fromkeys(names)]


class ScoreSerializer(serializers.ModelSerializer):
    checkpoint = serializers.SlugRelatedField(slug_field="name", read_only=True)
    suite = serializers.StringRelatedField(read_only=True)
    ci_low = serializers.FloatField(allow_null=True)
    ci_high = serializers.FloatField(allow_null=True)

    class Meta:
        model = Score
        fields = ["run", "checkpoint", "suite", "domain", "trait", "family", "condition",
                  "metric", "value", "ci_low", "ci_high", "n"]  # fmt: skip

    def to_representation(self, instance):
        from audits.metrics import finite_or_none

        data = super().to_representation(instance)
        for key in ("value", "ci_low", "ci_high"):
            data[key] = finite_or_none(data[key])
        return data


class GateQuerySerializer(serializers.Serializer):
    checkpoint = serializers.SlugField(help_text="the release candidate")
    against = serializers.SlugField(help_text="the reference, e.g. the production model")
    max_misalignment_increase = serializers.FloatField(
        required=False, min_value=-1, max_value=1,
        help_text="largest allowed rise of the misaligned share of probes (0.05 = 5 points)",
    )  # fmt: skip
    min_benefit_change = serializers.FloatField(
        required=False, min_value=-1e6, max_value=1e6,
        help_text="smallest allowed change of the benefit margin, nats",
    )  # fmt: skip
    strict = serializers.BooleanField(default=False)


class EventSerializer(serializers.ModelSerializer):
    class Meta:
        model = Event
        fields = ["id", "at", "actor_name", "action", "object_type", "object_id",
                  "object_repr", "details", "prev_hash", "hash"]  # fmt: skip
