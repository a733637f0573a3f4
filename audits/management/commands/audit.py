from __future__ import annotations

import getpass
import json
import math
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from audits.builtin import DEFAULT_SUITES
from audits.comparison import compare_runs, persistence_deltas, training_deltas
from audits.conditions import CONDITIONS
from audits.export import (
    FORMATS,
    ExportError,
    audit_document,
    data_sha256,
    export,
    report_card_document,
)
from audits.gate import GateError, gate
from audits.metrics import finite_or_none
from audits.models import DOMAINS, FINISHED, TRAITS, Audit, Plan, Priority, Profile, Status, Suite
from audits.services import MAX_SAMPLES, audit_create
from gpu_tasks.engine.methods import METHODS
from models_registry.models import Checkpoint
from models_registry.roles import can_export


class Command(BaseCommand):
    help = "Queue an audit (and optionally wait for it): audit run --checkpoint NAME"

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        run = sub.add_parser("run", help="queue an audit")
        run.add_argument(
            "--checkpoint", default=settings.KEEL_DEFAULT_CHECKPOINT,
            help=f"checkpoint name (default: {settings.KEEL_DEFAULT_CHECKPOINT})",
        )  # fmt: skip
        run.add_argument("--plan", choices=Plan.values, default=Plan.EVALUATE)
        run.add_argument(
            "--method",
            choices=METHODS,
            default="dpo",
            help="train-and-evaluate: how the variant is trained (default: dpo)",
        )
        run.add_argument(
            "--traits",
            nargs="+",
            metavar="TRAIT",
            help=f"train-and-evaluate: traits to train (default: all; {', '.join(TRAITS)})",
        )
        run.add_argument(
            "--train-domains",
            nargs="+",
            metavar="DOMAIN",
            help=f"train-and-evaluate: domains whose train split is used ({', '.join(DOMAINS)})",
        )
        run.add_argument(
            "--trait-reward",
            help="GRPO: registered reward model to train against "
            "(default: train one on the same traits and domains)",
        )
        run.add_argument(
            "--train-profile",
            choices=["quick", "standard"],
            help="size of training (default: quick with --profile quick, else standard)",
        )
        run.add_argument(
            "--learning-rate", type=float, help="training learning rate (default: the profile's)"
        )
        run.add_argument("--steps", type=int, help="training steps (default: the profile's)")
        run.add_argument(
            "--suite", action="append", dest="suites",
            help=f"suite name, repeatable (default: {' '.join(DEFAULT_SUITES)})",
        )  # fmt: skip
        run.add_argument(
            "--condition", action="append", dest="conditions", choices=sorted(CONDITIONS),
            metavar="NAME", help="neutral or a persona, repeatable (default: the profile's)",
        )  # fmt: skip
        run.add_argument("--profile", choices=Profile.values, default=Profile.QUICK)
        run.add_argument("--seed", type=int, default=0)
        run.add_argument(
            "--priority", choices=[p.label.lower() for p in Priority], default="normal",
            help="queued runs of higher priority are taken first (default: normal)",
        )  # fmt: skip
        run.add_argument(
            "--samples", type=int, default=1,
            help="replies sampled and graded per generative item (0: log-likelihood only)",
        )  # fmt: skip
        run.add_argument(
            "--judge", default=settings.KEEL_DEFAULT_CHECKPOINT,
            help="registered instruct checkpoint that grades rubric criteria, or 'none' "
            f"(default: {settings.KEEL_DEFAULT_CHECKPOINT})",
        )  # fmt: skip
        run.add_argument("--reward-model", help="registered reward model that grades replies")
        run.add_argument("--wait", action="store_true", help="wait until it finishes")
        run.add_argument("--timeout", type=float, default=3600, help="seconds to wait")
        run.add_argument("--json", action="store_true", help="print the result as JSON")
        run.add_argument("--id-only", action="store_true", help="print only the audit's id")
        compare = sub.add_parser("compare", help="paired differences between two audits")
        compare.add_argument("first", type=int, help="audit id (differences are first - second)")
        compare.add_argument("second", type=int, help="audit id to compare against")
        compare.add_argument("--all", action="store_true", help="every cell, not only overall")
        compare.add_argument("--json", action="store_true", help="print the result as JSON")
        export = sub.add_parser(
            "export", help="write an audit (or with --checkpoint, a report card) as PDF/JSON/CSV"
        )
        export.add_argument("id", nargs="?", type=int, help="audit id")
        export.add_argument("--checkpoint", help="export this checkpoint's report card instead")
        for fmt in FORMATS:
            export.add_argument(f"--{fmt}", metavar="FILE", help=f"write the {fmt.upper()} here")
        export.add_argument(
            "--as", dest="as_user", metavar="USER",
            help="the Keel user (compliance or admin) recorded as the exporter",
        )  # fmt: skip
        gate = sub.add_parser(
            "gate", help="exit 1 when a checkpoint is worse than its reference beyond a limit"
        )
        gate.add_argument("--checkpoint", required=True, help="the release candidate")
        gate.add_argument("--against", required=True, help="the reference (e.g. production)")
        gate.add_argument(
            "--max-misalignment-increase", type=float, metavar="X",
            help="largest allowed rise of the misaligned share of probes, a fraction "
            "(0.05 = five points)",
        )  # fmt: skip
        gate.add_argument(
            "--min-benefit-change", type=float, metavar="Y",
            help="smallest allowed change of the benefit margin, nats (e.g. -0.5 or 0)",
        )  # fmt: skip
        gate.add_argument(
            "--strict", action="store_true",
            help="block unless the whole interval is within the limit",
        )  # fmt: skip
        gate.add_argument("--json", action="store_true", help="print the verdict as JSON")

    def handle(self, *args, action: str, **options):
        if action == "compare":
            return self._compare(options)
        if action == "export":
            return self._export(options)
        if action == "gate":
            return self._gate(options)
        checkpoint = self._checkpoint(options["checkpoint"], "checkpoint")
        judge = (
            None
            if options["judge"] == "none"
            else self._checkpoint(options["judge"], "judge checkpoint")
        )
        reward = options["reward_model"] and self._checkpoint(
            options["reward_model"], "reward model"
        )
        if not 0 <= options["samples"] <= MAX_SAMPLES:
            raise CommandError(f"--samples must be 0 to {MAX_SAMPLES}.", returncode=2)
        trait_reward = options["trait_reward"] and self._checkpoint(
            options["trait_reward"], "reward model"
        )
        if options["steps"] is not None and options["steps"] < 1:
            raise CommandError("--steps must be at least 1.", returncode=2)
        training = options["plan"] == Plan.TRAIN_AND_EVALUATE
        if training and not options["train_domains"]:
            raise CommandError(
                f"--plan train-and-evaluate needs --train-domains (one or more of "
                f"{', '.join(DOMAINS)}).", returncode=2,
            )  # fmt: skip
        suites = self._suites(options["suites"])
        try:
            audit = audit_create(
                checkpoint=checkpoint, suites=suites, conditions=options["conditions"],
                profile=options["profile"], seed=options["seed"], samples=options["samples"],
                priority=Priority[options["priority"].upper()],
                judge=judge, reward_model=reward or None, plan=options["plan"],
                method=options["method"], traits=_words(options["traits"]),
                train_domains=_words(options["train_domains"]),
                trait_reward=trait_reward or None, steps=options["steps"],
                train_profile=options["train_profile"], learning_rate=options["learning_rate"],
            )  # fmt: skip
        except ValueError as exc:
            raise CommandError(f"{str(exc)[:1].upper()}{str(exc)[1:]}.", returncode=2) from None
        if options["id_only"]:
            self.stdout.write(str(audit.pk))
            return
        if not options["wait"]:
            self._print(audit, options["json"])
            return
        deadline = time.monotonic() + options["timeout"]
        while audit.status not in FINISHED:
            if time.monotonic() > deadline:
                raise CommandError(f"Audit {audit.pk} did not finish in time.", returncode=3)
            time.sleep(1)
            audit.refresh_from_db()
        self._print(audit, options["json"])
        if audit.status != Status.SUCCEEDED:
            errors = "; ".join(e for e in audit.runs.values_list("error", flat=True) if e)
            raise CommandError(f"Audit {audit.pk} {audit.status}: {errors}", returncode=1)

    def _compare(self, options) -> None:
        runs = []
        for audit_id in (options["first"], options["second"]):
            audit = Audit.objects.filter(pk=audit_id).first()
            if audit is None:
                raise CommandError(f"No audit {audit_id}.", returncode=2)
            run = audit.runs.filter(status=Status.SUCCEEDED).last()
            if run is None:
                raise CommandError(f"Audit {audit_id} has no finished run yet.", returncode=2)
            runs.append(run)
        rows = compare_runs(*runs, seed=runs[0].audit.seed)
        if not rows:
            raise CommandError("The two audits share no scored item and condition.", returncode=2)
        if not options["all"]:
            rows = [r for r in rows if not r["domain"]]
        if options["json"]:
            self.stdout.write(json.dumps(_clean(rows), indent=2, allow_nan=False))
            return
        for r in rows:
            where = "/".join(p for p in (r["suite"], r["condition"], r["domain"], r["trait"],
                                         r["family"]) if p)  # fmt: skip
            mark = " *" if r["significant"] else ""
            self.stdout.write(
                f"{where} {r['metric']}: {r['difference']:+.3f} ({r['ci_low']:+.3f} to "
                f"{r['ci_high']:+.3f}), n={r['n']}, flipped {r['flipped']}{mark}"
            )

    def _export(self, options) -> None:
        targets = {fmt: options[fmt] for fmt in FORMATS if options[fmt]}
        if not targets:
            raise CommandError("Say what to write: --pdf FILE, --json FILE and/or --csv FILE.",
                               returncode=2)  # fmt: skip
        if (options["id"] is None) == (options["checkpoint"] is None):
            raise CommandError("Name an audit id, or a checkpoint with --checkpoint (not both).",
                               returncode=2)  # fmt: skip
        for path in targets.values():
            folder = Path(path).expanduser().resolve().parent
            if not folder.is_dir():
                raise CommandError(f"Cannot write {path}: folder {folder} does not exist.",
                                   returncode=2)  # fmt: skip
        user = None
        if options["as_user"]:
            user = get_user_model().objects.filter(username=options["as_user"]).first()
            if user is None or not can_export(user):
                raise CommandError(f"{options['as_user']!r} is not a Keel user with the "
                                   "compliance or admin role.", returncode=2)  # fmt: skip
        if options["checkpoint"]:
            obj = self._checkpoint(options["checkpoint"], "checkpoint")
            build = report_card_document
        else:
            obj = Audit.objects.filter(pk=options["id"]).first()
            if obj is None:
                raise CommandError(f"No audit {options['id']}.", returncode=2)
            build = audit_document
        try:
            document = build(obj)
        except ExportError as exc:
            raise CommandError(f"{str(exc)[:1].upper()}{str(exc)[1:]}.", returncode=2) from None
        name = f"command line ({getpass.getuser()})"
        for fmt, path in targets.items():
            content, _, _ = export(dict(document), fmt, obj, user=user, name=name)
            Path(path).expanduser().write_bytes(content)
            self.stdout.write(f"Wrote {path} ({len(content):,} bytes, {fmt}).")
        self.stdout.write(f"Data SHA-256: {data_sha256(document)}")

    def _gate(self, options) -> None:
        limit = options["max_misalignment_increase"]
        values = (limit, options["min_benefit_change"])
        if any(v is not None and not math.isfinite(v) for v in values):
            raise CommandError("Thresholds must be finite numbers.", returncode=2)
        if limit is not None and not -1 <= limit <= 1:
            raise CommandError(
                f"--max-misalignment-increase is a fraction of probes (0.05 = five points), "
                f"between -1 and 1; {limit} is not.", returncode=2,
            )  # fmt: skip
        try:
            verdict = gate(
                self._checkpoint(options["checkpoint"], "checkpoint"),
                self._checkpoint(options["against"], "reference checkpoint"),
                max_misalignment_increase=limit, min_benefit_change=options["min_benefit_change"],
                strict=options["strict"],
            )  # fmt: skip
        except GateError as exc:
            raise CommandError(f"Cannot decide: {exc}.", returncode=2) from None
        if options["json"]:
            self.stdout.write(json.dumps(_clean(verdict.as_dict()), indent=2, allow_nan=False))
        else:
            self.stdout.write(verdict.text())
        if not verdict.passed:
            crossed = sum(c.crossed for c in verdict.checks)
            raise CommandError(f"Release blocked: {crossed} threshold(s) crossed.", returncode=1)

    def _checkpoint(self, name: str, role: str) -> Checkpoint:
        found = Checkpoint.objects.filter(name=name).first()
        if found is None:
            names = list(Checkpoint.objects.order_by("-registered_at")
                         .values_list("name", flat=True)[:11])  # fmt: skip
            listed = ", ".join(names[:10]) + (", …" if len(names) > 10 else "") or "none"
            raise CommandError(
                f"No {role} named {name!r} (newest registered: {listed}; `manage.py "
                "register_checkpoint` adds one).", returncode=2,
            )  # fmt: skip
        return found

    def _suites(self, names: list[str] | None) -> list[Suite]:
        latest = {suite.name: suite for suite in Suite.objects.newest_versions()}
        names = names or list(DEFAULT_SUITES)
        missing = [n for n in names if n not in latest]
        if missing:
            raise CommandError(
                f"Unknown suite(s) {', '.join(missing)} (known: {', '.join(latest) or 'none'}).",
                returncode=2,
            )
        return [latest[n] for n in names]

    def _print(self, audit: Audit, as_json: bool) -> None:
        scores = [
            {
                "checkpoint": s.checkpoint.name,
                "suite": f"{s.suite.name}@{s.suite.version}",
                "domain": s.domain,
                "trait": s.trait,
                "family": s.family,
                "condition": s.condition,
                "metric": s.metric,
                "value": s.value,
                "ci_low": finite_or_none(s.ci_low),
                "ci_high": finite_or_none(s.ci_high),
                "n": s.n,
            }  # fmt: skip
            for s in audit.scores.filter(domain="")
            .select_related("suite", "checkpoint")
            .order_by("run_id", "suite__name", "condition", "trait", "family", "metric")
        ]
        if as_json:
            out = {"audit": audit.pk, "status": audit.status, "checkpoint": audit.checkpoint.name,
                   "profile": audit.profile, "conditions": audit.conditions,
                   "config_hash": audit.config_hash, "summary": scores}  # fmt: skip
            deltas = training_deltas(audit)
            if deltas is not None:
                variant = Checkpoint.objects.get(name=deltas["variant"])
                out["training"] = {k: v for k, v in variant.training.items() if k != "curves"}
                out["variant"] = deltas["variant"]
                out["transfer"] = _clean(deltas["transfer"])
                out["deltas"] = _clean(deltas["overall"])
            persistence = persistence_deltas(audit)
            if persistence is not None:
                out["persistence"] = _clean(persistence)
            self.stdout.write(json.dumps(out, indent=2, default=str, allow_nan=False))
        else:
            self.stdout.write(f"Audit {audit.pk}: {audit.status}")


def _words(values: list[str] | None) -> list[str] | None:
    """Accept "a b", "a,b" and "a, b" alike."""
    if values is None:
        return None
    return [w for v in values for w in v.replace(",", " ").split()]


def _clean(data):
    """Infinite interval ends (too few items) become null in JSON."""
    if isinstance(data, dict):
        return {k: finite_or_none(v) if k in ("ci_low", "ci_high") else _clean(v)
                for k, v in data.items()}  # fmt: skip
    if isinstance(data, list):
        return [_clean(v) for v in data]
    return data
