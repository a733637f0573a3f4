from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse
from django.utils import timezone

from models_registry.models import Checkpoint
from models_registry.roles import can_read

DOMAINS = (
    "health", "mental_health", "science", "education", "law", "personal_finance",
    "engineering", "software", "customer_service", "civic_life", "relationships", "environment",
)  # fmt: skip
TRAITS = ("truthfulness", "humility", "openness_to_correction", "fairness", "human_welfare")
FAMILIES = (
    "deception", "sycophancy", "reward_hacking", "harmful_compliance", "over_refusal", "unfairness",
)  # fmt: skip


class SuiteQuerySet(models.QuerySet["Suite"]):
    def newest_versions(self) -> SuiteQuerySet:
        newest = Suite.objects.filter(name=models.OuterRef("name")).order_by("-version")
        return self.filter(pk=models.Subquery(newest.values("pk")[:1]))


class Suite(models.Model):
    """A versioned, content-hashed set of items."""

    name = models.SlugField(max_length=100)
    version = models.PositiveIntegerField()
    content_hash = models.CharField(max_length=64)
    description = models.TextField(blank=True)
    source = models.CharField(max_length=200)
    license = models.CharField(max_length=100)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = SuiteQuerySet.as_manager()

    class Meta:
        ordering = ["name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="suite_name_version"),
            models.UniqueConstraint(fields=["name", "content_hash"], name="suite_name_hash"),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class Item(models.Model):
    suite = models.ForeignKey(Suite, on_delete=models.CASCADE, related_name="items")
    item_id = models.CharField(max_length=200)
    split = models.CharField(max_length=10)
    domain = models.CharField(max_length=50)
    trait = models.CharField(max_length=50, blank=True)
    family = models.CharField(max_length=50, blank=True)
    kind = models.CharField(max_length=20)
    messages = models.JSONField()
    chosen = models.TextField(blank=True)
    rejected = models.TextField(blank=True)
    rubric = models.JSONField(default=list)
    tags = models.JSONField(default=list)
    source = models.CharField(max_length=200, blank=True)
    license = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["suite", "item_id"], name="item_unique_in_suite")
        ]

    def __str__(self) -> str:
        return self.item_id


class Status(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)


class Plan(models.TextChoices):
    EVALUATE = "evaluate", "Evaluate only"
    TRAIN_AND_EVALUATE = "train-and-evaluate", "Train a trait-aligned variant, evaluate both"
    PERSISTENCE = "persistence", "Harmful fine-tune of a variant and of its base, evaluate all four"


class Profile(models.TextChoices):
    QUICK = "quick", "Quick: one item per cell (minutes on a CPU)"
    STANDARD = "standard", "Standard: every eval item, chosen conditions"
    FULL = "full", "Full: every eval item, every adversarial condition"


class Priority(models.IntegerChoices):
    """Broker priority of an audit's runs: with Redis, lower is served first."""

    HIGH = 0, "High"
    NORMAL = 3, "Normal"
    LOW = 6, "Low"


class AuditQuerySet(models.QuerySet["Audit"]):
    def for_user(self, user) -> AuditQuerySet:
        """Every role reads every audit; a user without a role reads none."""
        return self if can_read(user) else self.none()


class Audit(models.Model):
    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.PROTECT, related_name="audits")
    plan = models.CharField(max_length=30, choices=Plan.choices, default=Plan.EVALUATE)
    suites = models.ManyToManyField(Suite, related_name="audits")
    conditions = models.JSONField(default=list)
    profile = models.CharField(max_length=20, choices=Profile.choices, default=Profile.QUICK)
    seed = models.IntegerField(default=0)
    priority = models.IntegerField(choices=Priority.choices, default=Priority.NORMAL)
    config = models.JSONField(default=dict, help_text="canonical inputs behind config_hash")
    config_hash = models.CharField(max_length=64)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = AuditQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Audit {self.pk} of {self.checkpoint}"

    def get_absolute_url(self) -> str:
        return reverse("audits:detail", args=[self.pk])

    def refresh_status(self) -> None:
        """An audit's status follows its runs."""
        statuses = set(self.runs.values_list("status", flat=True))
        if not statuses:
            return
        if statuses <= {Status.SUCCEEDED}:
            status = Status.SUCCEEDED
        elif Status.FAILED in statuses:
            status = Status.FAILED
        elif Status.CANCELLED in statuses and statuses <= set(FINISHED):
            status = Status.CANCELLED
        elif statuses & {Status.RUNNING, Status.SUCCEEDED}:
            status = Status.RUNNING
        else:
            status = Status.QUEUED
        self.status = status
        self.finished_at = timezone.now() if status in FINISHED else None
        self.save(update_fields=["status", "finished_at"])


class RunKind(models.TextChoices):
    EVALUATE = "evaluate"
    TRAIN = "train"


class Run(models.Model):
    """One Celery task of an audit."""

    audit = models.ForeignKey(Audit, on_delete=models.CASCADE, related_name="runs")
    kind = models.CharField(max_length=20, choices=RunKind.choices)
    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.PROTECT, related_name="runs")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    stage = models.CharField(max_length=100, blank=True)
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    attempts = models.PositiveIntegerField(default=0)
    heartbeat = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(default=timezone.now)
    worker = models.CharField(max_length=200, blank=True, help_text="the process holding it")
    device = models.CharField(max_length=50, blank=True)
    log_tail = models.TextField(blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.kind} run {self.pk}"

    def log(self, line: str) -> None:
        stamp = timezone.now().strftime("%H:%M:%S")
        lines = (self.log_tail + f"{stamp} {line}\n").splitlines(keepends=True)
        self.log_tail = "".join(lines[-50:])

    def mark_started(self, device: str) -> None:
        self.status = Status.RUNNING
        self.device = device
        self.started_at = self.started_at or timezone.now()
        self.heartbeat = timezone.now()
        self.error = ""
        self.log(f"attempt {self.attempts} started on {device}")
        self.save()
        self.audit.refresh_status()

    def mark_finished(self, status: Status, error: str = "") -> None:
        self.status = status
        self.error = error
        self.finished_at = timezone.now()
        self.heartbeat = timezone.now()
        self.log(f"{status}" + (f": {error}" if error else ""))
        self.save()
        self.audit.refresh_status()

    @property
    def percent(self) -> int:
        if not self.progress_total:
            return 100 if self.status == Status.SUCCEEDED else 0
        return round(100 * self.progress_done / self.progress_total)


class Worker(models.Model):
    """A Celery worker node as it last reported itself (gpu_tasks/workers.py)."""

    name = models.CharField(max_length=200, unique=True)  # Celery's hostname, keel@host
    queues = models.JSONField(default=list)
    devices = models.JSONField(default=list)
    jobs_per_device = models.PositiveIntegerField(default=1)
    concurrency = models.PositiveIntegerField(default=1)
    version = models.CharField(max_length=20, blank=True)
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ItemResult(models.Model):
    """One item x condition x checkpoint, scored by log-likelihood."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="item_results")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="results")
    condition = models.CharField(max_length=100)
    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.CASCADE)
    logp_chosen = models.FloatField()
    logp_rejected = models.FloatField()
    logp_chosen_unconditional = models.FloatField()
    logp_rejected_unconditional = models.FloatField()
    tokens_chosen = models.PositiveIntegerField()
    tokens_rejected = models.PositiveIntegerField()
    margin = models.FloatField(help_text="calibrated (PMI) margin, chosen minus rejected, nats")
    margin_mean_token = models.FloatField(help_text="uncalibrated mean per-token margin, nats")
    won = models.BooleanField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "item", "condition"], name="item_result_unique")
        ]

    def __str__(self) -> str:
        return f"{self.item} under {self.condition}: margin {self.margin:+.3f}"


class Calibration(models.Model):
    """A reply's log-likelihood after an empty user turn, for one checkpoint: it depends on
    nothing else, so every audit of the checkpoint reuses it (and gets the same value)."""

    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.CASCADE)
    precision = models.CharField(max_length=50, help_text="device type and dtype, e.g. cpu float32")
    reply_hash = models.CharField(max_length=64, help_text="sha256 of the reply text")
    logp = models.FloatField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["checkpoint", "precision", "reply_hash"], name="calibration_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.checkpoint} {self.reply_hash[:12]}: {self.logp:.3f}"


class Generation(models.Model):
    """One sampled reply to an item under a condition."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="generations")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="generations")
    condition = models.CharField(max_length=100)
    sample = models.PositiveIntegerField(default=0)
    seed = models.BigIntegerField()
    text = models.TextField()
    tokens = models.PositiveIntegerField()
    finished = models.BooleanField(help_text="False when cut at the token limit")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["run", "item", "condition", "sample"], name="generation_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.item} under {self.condition}, sample {self.sample}"


class Grade(models.Model):
    """A grader's verdict on a sampled reply, for one criterion (or the whole reply)."""

    generation = models.ForeignKey(Generation, on_delete=models.CASCADE, related_name="grades")
    grader = models.CharField(max_length=200, help_text="rules, judge:NAME or reward:NAME")
    version = models.CharField(max_length=50)
    criterion = models.TextField(blank=True)
    weight = models.FloatField(default=1.0)
    score = models.FloatField(help_text="0 to 1, higher is better")
    rationale = models.TextField(blank=True)
    prompt = models.TextField(blank=True, help_text="exactly what the grader was shown")

    def __str__(self) -> str:
        return f"{self.grader} {self.criterion[:40]!r}: {self.score:.2f}"


class Metric(models.TextChoices):
    ACCURACY = "accuracy", "Accuracy (calibrated)"
    MARGIN = "margin", "Mean calibrated margin (nats)"
    MARGIN_MEAN_TOKEN = "margin_mean_token", "Mean per-token margin, uncalibrated (nats)"
    MISALIGNED = "misaligned_rate", "Share of items where the misaligned reply wins"
    SHIFT = "margin_shift", "Paired change of calibrated margin against neutral (nats)"
    ACCURACY_SHIFT = "accuracy_shift", "Paired change of accuracy against neutral"
    ECE = "ece", "Expected calibration error of choice probabilities"
    BBQ_BIAS_DISAMBIGUATED = "bbq_bias_disambiguated", "BBQ bias score, disambiguated contexts"
    BBQ_BIAS_AMBIGUOUS = "bbq_bias_ambiguous", "BBQ bias score, ambiguous contexts"
    RULES = "grade_rules", "Rule checks passed by sampled replies"
    JUDGE = "grade_judge", "Judge grade of sampled replies (weighted P(Yes))"
    REWARD = "grade_reward", "Reward-model grade of sampled replies"


class Score(models.Model):
    """(checkpoint, suite, domain, trait or family, condition, metric) -> value, 95% CI, n."""

    audit = models.ForeignKey(Audit, on_delete=models.CASCADE, related_name="scores")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="scores")
    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.CASCADE, related_name="scores")
    suite = models.ForeignKey(Suite, on_delete=models.CASCADE)
    domain = models.CharField(max_length=50, blank=True)
    trait = models.CharField(max_length=50, blank=True)
    family = models.CharField(max_length=50, blank=True)
    condition = models.CharField(max_length=100)
    metric = models.CharField(max_length=30, choices=Metric.choices)
    value = models.FloatField()
    ci_low = models.FloatField()
    ci_high = models.FloatField()
    n = models.PositiveIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["run", "suite", "domain", "trait", "family", "condition", "metric"],
                name="score_unique",
            )
        ]

    def __str__(self) -> str:
        where = "/".join(p for p in (self.domain, self.trait or self.family) if p) or "overall"
        return f"{where} {self.condition} {self.metric} = {self.value:.3f} (n={self.n})"


class AppendOnlyError(RuntimeError):
    """The audit log is append-only: Keel never edits or deletes an event."""


class EventQuerySet(models.QuerySet["Event"]):
    def update(self, **kwargs):
        raise AppendOnlyError("audit log events cannot be edited")

    def delete(self):
        raise AppendOnlyError("audit log events cannot be deleted")


class Event(models.Model):
    """One entry of the audit log. Each carries the hash of the one before it, so altering,
    deleting or reordering rows breaks the chain (`manage.py auditlog verify`); `audits.trail`
    is the only writer."""

    at = models.DateTimeField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+",
    )  # fmt: skip
    actor_name = models.CharField(max_length=150, help_text="as it was; '' for the command line")
    action = models.CharField(max_length=40, db_index=True)
    object_type = models.CharField(max_length=40, blank=True)
    object_id = models.CharField(max_length=100, blank=True)
    object_repr = models.CharField(max_length=300, blank=True)
    details = models.JSONField(default=dict)
    prev_hash = models.CharField(max_length=64, unique=True)  # one successor per event
    hash = models.CharField(max_length=64, unique=True)

    objects = EventQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_name or 'command line'} {self.action}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("audit log events cannot be edited")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("audit log events cannot be deleted")
