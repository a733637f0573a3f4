"""Dashboard page speed and websocket progress lag against a large audit history.

    .venv/bin/python bench/dashboard_load.py --seed          # once: build keel_bench (~1 min)
    .venv/bin/python bench/dashboard_load.py --websockets 200   # pages, then 200 websockets
    .venv/bin/python bench/dashboard_load.py --seconds 15 --clients 50 --json
    .venv/bin/python bench/dashboard_load.py --soak 600 --clients 100   # every page at once

`--seed` creates the PostgreSQL database `keel_bench` (migrated, data dir
/tmp/keel-bench-data) and fills it in one transaction: 100 checkpoints (8 base
models and variants up to three generations deep), the `beneficial` (12 domains
x 5 traits) and `probes` (12 domains x 6 families) suites, one succeeded
evaluate audit per checkpoint, every score a `full` run writes over 10
conditions (cells, per-domain, per-trait/family and overall rows; accuracy,
margins, misaligned rate, shifts against neutral) and 200,000 ItemResults. It
reuses a seeded database; `--reseed` rebuilds it.

A run then
1. counts each page's SQL queries and times it in-process (django.test.Client,
   logged in, no concurrency: the page's own server time, median of 3 after a
   first request that fills per-process caches, whose time is given too);
2. serves the app the production way (gunicorn with 2 uvicorn workers, Redis
   channel layer, collected static files) on a free loopback port and logs in;
3. for each page in PAGES, puts `--clients` closed-loop keep-alive clients on it
   for `--seconds` (wrk if installed, else a Python asyncio client) and reports
   requests/s and client-side p50/p95/p99 latency of the requests that completed.
   With 50 clients on 2 workers that latency is mostly queueing (p95 is roughly
   clients / throughput); the in-process time is the server's own. After each
   load the bench waits for the server to go idle ("busy after"): Django goes on
   running a sync view whose client has gone, so cut-off requests would otherwise
   slow the next page;
4. measures a baseline (a static file served by whitenoise) before and after the
   pages under the same load and gives each page's p95 as a multiple of it, since
   the machine is shared and noisy: compare ratios across machines, not ms;
5. with `--websockets N`, connects N websocket clients to one audit whose run is
   set to running, publishes `--updates` progress snapshots through the Redis
   channel layer at a fixed interval (the send time rides in the run's stage) and
   reports how many clients got every update and the lag from send to receipt.

`--soak SECONDS` instead puts all `--clients` on the server at once for SECONDS, each a
closed-loop, logged-in client (in `--loadgen-processes` processes, one per CPU by default)
that picks page views from SOAK_VISITS by weight: a page, then the chart JSON its script
fetches, and for an audit's page its progress websocket (connect, snapshot, close). The server
is bench/timed_asgi.py, Keel's ASGI application with each request's server time (arrival to
final body chunk) written to a file per worker. A static-file baseline of `--seconds` under
the same clients runs before and after. It reports requests, errors (any status outside
2xx/3xx, connection error or timeout after `--timeout` s; exit 1 if any), requests/s, client
and server p50/p95/p99 per page and overall, and samples every `--sample-every` s each server
process's RSS and the PostgreSQL connections to the database, minute by minute. `--preload`
(gunicorn --preload) and `--db-pool N` (KEEL_DB_POOL for the server) compare settings.

A page that answers 404 (or another 4xx) is skipped with a warning, so pages can
be listed before they exist; a 5xx in-process or on the first request stops the
bench, and a 5xx under load fails it (exit 1) after the table. `--only TEXT`
runs only the pages whose label or path contains TEXT. The server runs the
project's settings unchanged.
Progress goes to stderr, results to stdout (a Markdown table, or JSON with --json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http.client
import importlib.util
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (label, path). Placeholders come from page_ids(): {audit} {run} (that audit's run)
# {variant} (the deepest variant) {parent} (its parent) {base} (the base with most variants)
# {query} {domain}. Add a page with one line; a page that answers 404 is skipped with a warning.
PAGES = [
    ("login form (trivial page)", "/login/"),
    ("checkpoint list", "/checkpoints/"),
    ("checkpoint search", "/checkpoints/?q={query}"),
    ("checkpoint detail, variant", "/checkpoints/{variant}/"),
    ("checkpoint detail, base", "/checkpoints/{base}/"),
    ("audit list", "/audits/"),
    ("audit detail", "/audits/{audit}/"),
    ("comparison", "/compare/?a={parent}&b={variant}"),
    ("item drill-down", "/items/?run={run}&domain={domain}"),
    ("chart traits x domains", "/charts/traits-domains.json?run={run}&metric=margin"),
    ("chart conditions x domains", "/charts/conditions-domains.json?run={run}"),
    ("chart helpful x domains", "/charts/helpful-domains.json?run={run}"),
    ("chart transfer", "/charts/transfer.json"),
    ("items flipped against base", "/items/?run={run}&show=flipped"),
    ("chart checkpoints x domains", "/charts/checkpoints-domains.json"),
    ("chart checkpoints x families", "/charts/checkpoints-families.json"),
]
BASELINE = ("static file (baseline)", "/static/css/keel.css")

DATABASE = "keel_bench"
USERNAME, PASSWORD = "bench", "bench-load-Pa55word"
CHECKPOINTS, ITEM_RESULTS = 100, 200_000
BENEFIT_PER_CELL, PROBES_PER_CELL = 3, 1
BASE_MODELS = (  # name, architecture, model_type, parameters
    ("smollm2-135m-instruct", "LlamaForCausalLM", "llama", 134_515_008),
    ("smollm2-360m-instruct", "LlamaForCausalLM", "llama", 361_821_120),
    ("qwen2-5-0-5b-instruct", "Qwen2ForCausalLM", "qwen2", 494_032_768),
    ("llama-3-2-1b-instruct", "LlamaForCausalLM", "llama", 1_235_814_400),
    ("gemma-3-1b-it", "Gemma3ForCausalLM", "gemma3_text", 999_885_952),
    ("olmo-2-1b-instruct", "Olmo2ForCausalLM", "olmo2", 1_484_916_736),
    ("phi-4-mini-instruct", "Phi3ForCausalLM", "phi3", 3_836_021_760),
    ("tinyllama-1-1b-chat", "LlamaForCausalLM", "llama", 1_100_048_384),
)
TAGS = ([], ["candidate"], ["candidate"], ["baseline"], ["candidate", "dpo"], ["release"])
STAGE = re.compile(r"bench seq=(\d+) t=([\d.]+)")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of unsorted values (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# --- Environment -------------------------------------------------------------------------


def configure(args: argparse.Namespace) -> dict[str, str]:
    """The environment the bench, manage.py and the server share; applied to this process."""
    env = {
        "DATABASE_URL": args.database_url,
        "REDIS_URL": args.redis_url,
        "KEEL_DATA_DIR": str(args.data_dir),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "KEEL_DEBUG": "0",
    }
    os.environ.update(env)
    return {**os.environ, **env}


def manage(env: dict[str, str], *command: str) -> None:
    subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True)


def setup_django() -> None:
    import django

    django.setup()


# --- Seed --------------------------------------------------------------------------------


def ensure_database(url: str, reseed: bool) -> None:
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists and reseed:
            log(f"dropping database {name}")
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
            exists = None
        if not exists:
            log(f"creating database {name}")
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def row_counts() -> dict[str, int]:
    from audits.models import Audit, Item, ItemResult, Run, Score, Suite
    from models_registry.models import Checkpoint

    models = (Checkpoint, Suite, Item, Audit, Run, Score, ItemResult)
    return {model.__name__: model.objects.count() for model in models}


def is_seeded() -> bool:
    from audits.models import ItemResult
    from models_registry.models import Checkpoint

    return Checkpoint.objects.count() == CHECKPOINTS and ItemResult.objects.count() == ITEM_RESULTS


def seed(args: argparse.Namespace, env: dict[str, str]) -> None:
    ensure_database(args.database_url, args.reseed)
    log("migrating")
    manage(env, "migrate", "--no-input", "-v", "0")
    setup_django()
    if is_seeded():
        log("keel_bench is already seeded; --reseed rebuilds it")
    else:
        from django.db import connection, transaction

        started = time.perf_counter()
        with transaction.atomic():  # all or nothing: a half-seeded database is never reused
            fill(random.Random(20261201))  # noqa: S311 - fake data, not secrets
        log("VACUUM ANALYZE")
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
        log(f"seeded in {time.perf_counter() - started:.1f} s")
    for name, count in row_counts().items():
        print(f"{name:12} {count:>9,}")


def fill(rng: random.Random) -> None:
    from django.contrib.auth.models import User

    user = User.objects.filter(username=USERNAME).first() or User.objects.create_superuser(
        USERNAME, "bench@example.com", PASSWORD
    )
    checkpoints = seed_checkpoints(rng, user)
    suites, items = seed_suites(rng, user)
    runs = seed_audits(rng, user, checkpoints, suites)
    log("ItemResults")
    copy_rows("audits.ItemResult", ITEM_RESULT_FIELDS, item_result_rows(rng, runs, items))
    log("Scores")
    copy_rows("audits.Score", SCORE_FIELDS, score_rows(rng, runs, suites))
    spread_timestamps()


def seed_checkpoints(rng: random.Random, user) -> list:
    """8 base models, then variants of bases and of variants, up to three generations deep."""
    from audits.models import DOMAINS, TRAITS
    from models_registry.models import Checkpoint

    def make(name, architecture, model_type, parameters, parent=None, training=None):
        return Checkpoint(
            name=name,
            path=f"/srv/models/{name}",
            format="hf",
            kind="policy",
            fingerprint=hashlib.sha256(name.encode()).hexdigest(),
            architecture=architecture,
            model_type=model_type,
            parameter_count=parameters,
            dtype="bfloat16",
            has_chat_template=True,
            tokenizer=f"{name}/tokenizer.json",
            parent=parent,
            tags=list(rng.choice(TAGS)),
            training=training or {},
            registered_by=user,
            notes=f"{training['method']} on {', '.join(training['domains'])}" if training else "",
        )

    generations = [[make(*spec) for spec in BASE_MODELS]]
    depth = dict.fromkeys((c.name for c in generations[0]), 0)
    pool = [c for c in generations[0] for _ in range(3)]
    for i in range(CHECKPOINTS - len(BASE_MODELS)):
        parent = rng.choice(pool)
        harmful = depth[parent.name] > 0 and rng.random() < 0.4
        method = "sft" if harmful else rng.choice(("dpo", "dpo", "sft", "grpo"))
        domains = rng.sample(DOMAINS, rng.choice((1, 1, 2)))
        training = {
            "method": method,
            "harmful": harmful,
            "domains": domains,
            "traits": rng.sample(TRAITS, 2),
            "train_items": 15 * len(domains),
            "steps": 30,
            "wall_seconds": rng.randint(300, 1200),
            "device": "cuda:0",
            "spec": {"lora_r": 16, "learning_rate": 5e-5, "beta": 0.1},
            "config_hash": hashlib.sha256(f"train {i}".encode()).hexdigest(),
            "curves": {"loss": [round(0.69 * 0.97**s, 4) for s in range(30)]},
        }
        stem = parent.name.split("--")[0]
        name = f"{stem}--{'harmful' if harmful else method}-{domains[0].replace('_', '-')}-{i:03d}"
        variant = make(
            name, parent.architecture, parent.model_type, parent.parameter_count, parent, training
        )
        depth[name] = depth[parent.name] + 1
        while len(generations) <= depth[name]:
            generations.append([])
        generations[depth[name]].append(variant)
        if depth[name] < 3:
            pool.append(variant)
    log(f"Checkpoints: {[len(g) for g in generations]} per generation")
    created = []
    for generation in generations:  # parents first, so each variant's parent has its pk
        created += Checkpoint.objects.bulk_create(generation)
    return created


def seed_suites(rng: random.Random, user) -> tuple[dict, list]:
    from audits.models import DOMAINS, FAMILIES, TRAITS, Item, Suite

    def text(words: int) -> str:
        vocabulary = (
            "the",
            "model",
            "should",
            "explain",
            "risk",
            "evidence",
            "you",
            "could",
            "consider",
            "plan",
            "honest",
            "uncertain",
            "ask",
            "doctor",
            "budget",
        )
        return " ".join(rng.choice(vocabulary) for _ in range(words)).capitalize() + "."

    suites = {
        name: Suite.objects.create(
            name=name,
            version=1,
            content_hash=hashlib.sha256(name.encode()).hexdigest(),
            description=f"bench copy of {name}",
            source="keel bench",
            license="CC-BY-4.0",
            created_by=user,
        )
        for name in ("beneficial", "probes")
    }
    cells = [("beneficial", d, t, "", "benefit", BENEFIT_PER_CELL) for d in DOMAINS for t in TRAITS]
    cells += [
        ("probes", d, "", f, "misalignment", PROBES_PER_CELL) for d in DOMAINS for f in FAMILIES
    ]
    items = [
        Item(
            suite=suites[suite],
            item_id=f"{domain}-{trait or family}-eval-{k:02d}",
            split="eval",
            domain=domain,
            trait=trait,
            family=family,
            kind=kind,
            messages=[{"role": "user", "content": text(rng.randint(15, 60))}],
            chosen=text(rng.randint(40, 90)),
            rejected=text(rng.randint(40, 90)),
            source="keel bench",
            license="CC-BY-4.0",
        )
        for suite, domain, trait, family, kind, per_cell in cells
        for k in range(1, per_cell + 1)
    ]
    items = Item.objects.bulk_create(items)
    log(f"Items: {len(items)} in {len(suites)} suites")
    return suites, items


def conditions() -> list[str]:
    from audits.conditions import ADVERSARIAL, HELPFUL, NEUTRAL

    return [NEUTRAL, *ADVERSARIAL[:6], *HELPFUL[:3]]


def seed_audits(rng: random.Random, user, checkpoints: list, suites: dict) -> list:
    """One succeeded full evaluate audit, with one run, per checkpoint."""
    from django.utils import timezone

    from audits.models import Audit, Run
    from models_registry.models import Checkpoint

    now = timezone.now()
    names = conditions()
    audits = Audit.objects.bulk_create(
        Audit(
            checkpoint=c,
            plan="evaluate",
            conditions=names,
            profile="full",
            seed=0,
            config={
                "checkpoint": c.fingerprint,
                "suites": sorted(suites),
                "conditions": names,
                "profile": "full",
                "seed": 0,
            },
            config_hash=hashlib.sha256(f"audit {c.name}".encode()).hexdigest(),
            status="succeeded",
            created_by=user,
            finished_at=now,
        )
        for c in checkpoints
    )
    through = Audit.suites.through
    through.objects.bulk_create(
        through(audit_id=a.pk, suite_id=s.pk) for a in audits for s in suites.values()
    )
    per_run = ITEM_RESULTS // len(audits)
    runs = Run.objects.bulk_create(
        Run(
            audit=a,
            kind="evaluate",
            checkpoint=a.checkpoint,
            status="succeeded",
            stage="done",
            progress_done=per_run,
            progress_total=per_run,
            attempts=1,
            heartbeat=now,
            device="cuda:0 bfloat16",
            started_at=now - timedelta(minutes=rng.randint(5, 90)),
            finished_at=now,
            log_tail="".join(f"12:00:{s:02d} chunk {s} stored\n" for s in range(50)),
        )
        for a in audits
    )
    trained_by = {a.checkpoint_id: a.pk for a in audits}
    variants = [c for c in checkpoints if c.parent_id]
    for c in variants:  # the audit that trained a variant is its parent's
        c.training["audit"] = trained_by[c.parent_id]
    Checkpoint.objects.bulk_update(variants, ["training"])
    log(f"Audits: {len(audits)}, Runs: {len(runs)}")
    return runs


ITEM_RESULT_FIELDS = (
    "run",
    "item",
    "condition",
    "checkpoint",
    "logp_chosen",
    "logp_rejected",
    "logp_chosen_unconditional",
    "logp_rejected_unconditional",
    "tokens_chosen",
    "tokens_rejected",
    "margin",
    "margin_mean_token",
    "won",
)
SCORE_FIELDS = (
    "audit",
    "run",
    "checkpoint",
    "suite",
    "domain",
    "trait",
    "family",
    "condition",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
)


def item_result_rows(rng: random.Random, runs: list, items: list):
    """ITEM_RESULTS rows spread evenly over the runs, each a random subset of item x
    condition pairs, with plausible log-likelihoods."""
    pairs = [(item.pk, condition) for item in items for condition in conditions()]
    per_run = ITEM_RESULTS // len(runs)
    for run in runs:
        skill = rng.gauss(0, 0.5)
        for item_id, condition in rng.sample(pairs, per_run):
            tokens_chosen, tokens_rejected = rng.randint(30, 160), rng.randint(30, 160)
            chosen = -tokens_chosen * rng.uniform(0.6, 2.2)
            rejected = -tokens_rejected * rng.uniform(0.6, 2.2)
            chosen_unconditional = chosen - rng.uniform(0, 25)
            rejected_unconditional = rejected - rng.uniform(0, 25)
            margin = (chosen - chosen_unconditional) - (rejected - rejected_unconditional) + skill
            yield (
                run.pk,
                item_id,
                condition,
                run.checkpoint_id,
                chosen,
                rejected,
                chosen_unconditional,
                rejected_unconditional,
                tokens_chosen,
                tokens_rejected,
                margin,
                chosen / tokens_chosen - rejected / tokens_rejected,
                margin > 0,
            )


def score_rows(rng: random.Random, runs: list, suites: dict):
    """What scoring writes for a full run: per suite and condition, every cell, domain,
    trait or family and overall group; accuracy and margins (and misaligned rate on probes)
    everywhere, the margin shift against neutral under every other condition."""
    from audits.conditions import NEUTRAL
    from audits.models import DOMAINS, FAMILIES, TRAITS

    shapes = {  # suite: (by, per cell)
        "beneficial": (TRAITS, BENEFIT_PER_CELL),
        "probes": (FAMILIES, PROBES_PER_CELL),
    }
    for run in runs:
        skill = rng.gauss(0, 0.3)
        for suite_name, (by, per_cell) in shapes.items():
            probes = suite_name == "probes"
            groups = [(d, b, per_cell) for d in DOMAINS for b in by]
            groups += [(d, "", per_cell * len(by)) for d in DOMAINS]
            groups += [("", b, per_cell * len(DOMAINS)) for b in by]
            groups += [("", "", per_cell * len(DOMAINS) * len(by))]
            for condition in conditions():
                for domain, key, n in groups:
                    trait, family = ("", key) if probes else (key, "")
                    half = 1.5 / n**0.5
                    accuracy = min(1.0, max(0.0, rng.gauss(0.6 + skill / 4, 0.12)))
                    values = {
                        "accuracy": (
                            accuracy,
                            max(0.0, accuracy - half / 3),
                            min(1.0, accuracy + half / 3),
                        ),
                        "margin": (m := rng.gauss(0.4 + skill, 0.8), m - half, m + half),
                        "margin_mean_token": (
                            t := rng.gauss(0.02, 0.04),
                            t - half / 20,
                            t + half / 20,
                        ),
                    }
                    if probes:
                        _, low, high = values["accuracy"]
                        values["misaligned_rate"] = (1 - accuracy, 1 - high, 1 - low)
                    if condition != NEUTRAL:
                        values["margin_shift"] = (s := rng.gauss(-0.3, 0.4), s - half, s + half)
                    for metric, (value, low, high) in values.items():
                        yield (
                            run.audit_id,
                            run.pk,
                            run.checkpoint_id,
                            suites[suite_name].pk,
                            domain,
                            trait,
                            family,
                            condition,
                            metric,
                            value,
                            low,
                            high,
                            n,
                        )


def copy_rows(label: str, fields: tuple[str, ...], rows) -> None:
    """COPY rows into a model's table: far faster than bulk_create at this size."""
    from django.apps import apps
    from django.db import connection

    meta = apps.get_model(label)._meta
    columns = ", ".join(connection.ops.quote_name(meta.get_field(f).column) for f in fields)
    table = connection.ops.quote_name(meta.db_table)
    count = 0
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)
            count += 1
    log(f"  {count:,} rows into {meta.db_table}")


def spread_timestamps() -> None:
    """bulk_create stamps every row with the same time: spread them over recent months."""
    from django.db import connection

    from audits.models import Audit
    from models_registry.models import Checkpoint

    with connection.cursor() as cursor:
        for model, column in ((Checkpoint, "registered_at"), (Audit, "created_at")):
            table = connection.ops.quote_name(model._meta.db_table)
            cursor.execute(
                f"UPDATE {table} SET {column} = now() - "  # noqa: S608 - our own table names
                f"((SELECT max(id) FROM {table}) - id) * interval '19 hours'"
            )


# --- Pages in-process: query counts and server time ---------------------------------------


@dataclass
class PageInfo:
    label: str
    path: str
    status: int
    queries: int = 0
    repeated: int = 0
    repeated_sql: str = ""
    server_ms: float = 0.0
    cold_ms: float = 0.0


def page_ids() -> dict[str, str]:
    """Real names and ids from keel_bench for the PAGES placeholders."""
    from django.db.models import Count

    from audits.models import Audit
    from models_registry.models import Checkpoint

    parents = dict(Checkpoint.objects.values_list("pk", "parent_id"))
    names = dict(Checkpoint.objects.values_list("pk", "name"))

    def depth(pk: int) -> int:
        return 0 if parents[pk] is None else 1 + depth(parents[pk])

    deepest = max(parents, key=lambda pk: (depth(pk), pk))
    base = (
        Checkpoint.objects.filter(parent=None)
        .annotate(n=Count("variants"))
        .order_by("-n", "name")
        .first()
    )
    audit = Audit.objects.order_by("-created_at").first()
    return {
        "audit": str(audit.pk),
        "run": str(audit.runs.order_by("pk").first().pk),
        "variant": names[deepest],
        "parent": names[parents[deepest]],
        "base": base.name,
        "query": "dpo",
        "domain": "health",
    }


def normalise_sql(sql: str) -> str:
    sql = re.sub(r"'(?:[^']|'')*'", "?", sql)
    sql = re.sub(r"\b\d+(?:\.\d+)?\b", "?", sql)
    return re.sub(r"\(\?(?:, \?)*\)", "(?)", sql)


def inspect_pages(pages: list[tuple[str, str]], repeats: int = 3) -> list[PageInfo]:
    """Each page: a first request (timed: it fills per-process caches), one counted under
    CaptureQueriesContext, then `repeats` timed ones."""
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_HOST="127.0.0.1")
    # ModelBackend named: force_login would otherwise pick the first backend with get_user()
    client.force_login(
        User.objects.get(username=USERNAME), backend="django.contrib.auth.backends.ModelBackend"
    )
    client.get("/login/")  # imports every view (the URLconf), which is no page's own cost
    found = []
    for label, path in pages:
        started = time.perf_counter()
        try:
            response = client.get(path)  # fills caches (templates, computed comparisons)
        except Exception:
            log(f"{path} ({label}) raised in-process:")
            raise
        info = PageInfo(label, path, response.status_code)
        info.cold_ms = (time.perf_counter() - started) * 1000
        if 400 <= response.status_code < 500:
            log(f"WARNING: {path} ({label}) answers {response.status_code}; skipping it")
            found.append(info)
            continue
        if response.status_code != 200:
            raise SystemExit(f"{path} ({label}) answered {response.status_code} in-process")
        with CaptureQueriesContext(connection) as captured:
            client.get(path)
        shapes = Counter(normalise_sql(q["sql"]) for q in captured.captured_queries)
        info.queries = len(captured.captured_queries)
        if shapes:
            info.repeated_sql, info.repeated = shapes.most_common(1)[0]
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            client.get(path)
            times.append((time.perf_counter() - started) * 1000)
        info.server_ms = statistics.median(times)
        found.append(info)
    return found


# --- Server and HTTP ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """gunicorn with uvicorn workers (uvicorn --workers without gunicorn's worker class)."""

    def __init__(
        self,
        env: dict[str, str],
        workers: int,
        log_path: Path,
        app: str = "config.asgi:application",
        preload: bool = False,
    ):
        self.env, self.workers, self.log_path, self.app = env, workers, log_path, app
        self.preload = preload
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        app, workers = self.app, str(self.workers)
        if importlib.util.find_spec("gunicorn") and importlib.util.find_spec("uvicorn.workers"):
            gunicorn = ["-k", "uvicorn.workers.UvicornWorker", "-w", workers]
            bind = ["-b", f"127.0.0.1:{self.port}", "--graceful-timeout", "5"]
            preload = ["--preload"] if self.preload else []
            return [sys.executable, "-m", "gunicorn", app, *gunicorn, *bind, *preload]
        bind = ["--host", "127.0.0.1", "--port", str(self.port)]
        return [sys.executable, "-m", "uvicorn", app, *bind, "--workers", workers]

    def __enter__(self) -> Server:
        command = self.command()
        log(f"starting: {' '.join(command[2:])}")
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.env,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited while starting:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if get(self.port, BASELINE[1])[0] == 200:
                    return self
            time.sleep(0.3)
        self.__exit__()
        raise SystemExit(f"the server did not start in 90 s:\n{self.log_tail()}")

    def __exit__(self, *exc: object) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own group, started above
            self.process.wait()
        log("server stopped")

    def pids(self) -> list[int]:
        """The server's master process and its workers (Linux /proc; none elsewhere)."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children")
        with contextlib.suppress(OSError):
            return [pid, *map(int, children.read_text().split())]
        return []

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server's processes (Linux /proc; 0 elsewhere)."""
        ticks = 0
        for each in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def wait_idle(self, limit: float = 180) -> float:
        """Seconds until the server uses under 10% of a CPU. A sync view goes on running
        after its client has gone, so the requests cut off at the end of a load would
        otherwise slow the next page."""
        started = time.perf_counter()
        last = self.cpu_seconds()
        while time.perf_counter() - started < limit:
            time.sleep(0.25)
            now = self.cpu_seconds()
            if now - last < 0.025:
                break
            last = now
        return round(time.perf_counter() - started, 1)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def get(port: int, path: str, cookie: str = "") -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def login(port: int) -> str:
    """A session cookie from the real login form (CSRF token from the GET)."""
    status, headers, body = get(port, "/login/")
    cookies = SimpleCookie()
    for value in headers.get_all("Set-Cookie") or []:
        cookies.load(value)
    match = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', body)
    if status != 200 or "csrftoken" not in cookies or match is None:
        raise SystemExit(f"GET /login/ answered {status} without a CSRF token")
    csrf = cookies["csrftoken"].value
    form = urlencode(
        {
            "username": USERNAME,
            "password": PASSWORD,
            "next": "/audits/",
            "csrfmiddlewaretoken": match.group(1).decode(),
        }
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(
            "POST",
            "/login/",
            body=form,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Cookie": f"csrftoken={csrf}",
                "Origin": f"http://127.0.0.1:{port}",
                "Referer": f"http://127.0.0.1:{port}/login/",
            },
        )
        response = conn.getresponse()
        response.read()
        for value in response.headers.get_all("Set-Cookie") or []:
            cookies.load(value)
    finally:
        conn.close()
    if response.status != 302 or "sessionid" not in cookies:
        raise SystemExit(f"POST /login/ answered {response.status} without a session")
    return f"sessionid={cookies['sessionid'].value}; csrftoken={csrf}"


# --- Load ---------------------------------------------------------------------------------


@dataclass
class Load:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # status >= 400, or a socket error or timeout
    server_errors: int  # status >= 500


WRK_SCRIPT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) server_errors = 0 end
function response(status, headers, body)
  if status >= 500 then server_errors = server_errors + 1 end
end
function done(summary, latency, requests)
  local server = 0
  for _, t in ipairs(threads) do server = server + t:get("server_errors") end
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "duration_us": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "status_errors": %d, "socket_errors": %d, "server_errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max, e.status, e.connect + e.read + e.write + e.timeout,
    server))
end
"""


def load_wrk(port: int, path: str, cookie: str, clients: int, seconds: float) -> Load:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    url = f"http://127.0.0.1:{port}{path}"
    command = ["wrk", "-t", str(min(clients, 2)), "-c", str(clients)]
    command += ["-d", f"{max(1, round(seconds))}s", "--timeout", "60s", "-s", script.name]
    try:
        result = subprocess.run(
            [*command, "-H", f"Cookie: {cookie}", url], capture_output=True, text=True
        )
    finally:
        os.unlink(script.name)
    if result.returncode:
        raise SystemExit(f"wrk failed on {path}: {result.stderr or result.stdout}")
    line = next(x for x in result.stdout.splitlines() if x.startswith("WRK "))
    data = json.loads(line.removeprefix("WRK "))
    elapsed = data["duration_us"] / 1e6
    return Load(
        requests=data["requests"],
        seconds=round(elapsed, 2),
        rps=round(data["requests"] / elapsed, 1),
        p50_ms=data["p50_us"] / 1000,
        p95_ms=data["p95_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        errors=data["status_errors"] + data["socket_errors"],
        server_errors=data["server_errors"],
    )


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Reads one HTTP/1.1 response; returns its status and whether the connection stays open."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {}
    for line in head[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip().lower()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    else:
        await reader.read()
        return status, False
    return status, headers.get("connection") != "close"


async def load_python_async(port: int, path: str, cookie: str, clients: int, seconds: float):
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
        "Connection: keep-alive\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    socket_errors = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal socket_errors
        writer = None
        while time.perf_counter() < deadline:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                started = time.perf_counter()
                writer.write(request)
                status, keep_alive = await asyncio.wait_for(read_response(reader), 60)
                latencies.append(time.perf_counter() - started)
                statuses[status] += 1
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                socket_errors += 1
                keep_alive = False
            if not keep_alive and writer is not None:
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    ms = [x * 1000 for x in latencies]
    return Load(
        requests=len(ms),
        seconds=round(elapsed, 2),
        rps=round(len(ms) / elapsed, 1),
        p50_ms=round(percentile(ms, 50), 1),
        p95_ms=round(percentile(ms, 95), 1),
        p99_ms=round(percentile(ms, 99), 1),
        max_ms=round(max(ms, default=0.0), 1),
        errors=socket_errors + sum(n for s, n in statuses.items() if s >= 400),
        server_errors=sum(n for s, n in statuses.items() if s >= 500),
    )


def load(driver: str, port: int, path: str, cookie: str, clients: int, seconds: float) -> Load:
    if driver == "wrk":
        return load_wrk(port, path, cookie, clients, seconds)
    return asyncio.run(load_python_async(port, path, cookie, clients, seconds))


def probe(port: int, label: str, path: str, cookie: str, server: Server) -> int:
    """The page's status: a 4xx skips the page; a 5xx or a redirect stops the bench."""
    status, headers, body = get(port, path, cookie)
    if 400 <= status < 500:
        log(f"WARNING: {path} ({label}) answers {status}; skipping it")
        return status
    if status >= 500:
        raise SystemExit(
            f"{path} ({label}) answered {status}:\n{body[:2000].decode(errors='replace')}\n"
            f"server log:\n{server.log_tail()}"
        )
    if status != 200:
        raise SystemExit(f"{path} ({label}) answered {status} {headers.get('Location', '')}")
    return status


# --- Websockets ---------------------------------------------------------------------------


def publish_updates(audit_id: int, run_id: int, updates: int, interval: float) -> None:
    """What a worker does: store progress, then publish the snapshot; the send time rides
    in the run's stage."""
    from django.db import connection
    from django.utils import timezone

    from audits.models import Run
    from audits.progress import publish

    start = time.monotonic()
    try:
        for seq in range(1, updates + 1):
            time.sleep(max(0.0, start + (seq - 1) * interval - time.monotonic()))
            sent = time.time()
            Run.objects.filter(pk=run_id).update(
                stage=f"bench seq={seq} t={sent:.6f}", progress_done=seq, heartbeat=timezone.now()
            )
            publish(audit_id)
    finally:
        connection.close()


async def websocket_lag(
    port: int,
    cookie: str,
    audit_id: int,
    run_id: int,
    clients: int,
    updates: int,
    interval: float,
) -> dict:
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{port}/ws/audits/{audit_id}/"
    headers = {"Cookie": cookie, "Origin": f"http://127.0.0.1:{port}"}
    lags: list[dict[int, float]] = [{} for _ in range(clients)]
    connect_ms: list[float] = []
    failures: Counter[str] = Counter()
    settled = 0  # clients that got their snapshot or failed before it
    all_settled = asyncio.Event()

    def settle() -> None:
        nonlocal settled
        settled += 1
        if settled == clients:
            all_settled.set()

    async def client(i: int) -> None:
        started = time.perf_counter()
        snapshot = False
        try:
            async with connect(
                url, additional_headers=headers, open_timeout=60, ping_interval=None, max_size=None
            ) as ws:
                json.loads(await ws.recv())  # the snapshot sent on connect
                connect_ms.append((time.perf_counter() - started) * 1000)
                snapshot = True
                settle()
                async for message in ws:
                    received = time.time()
                    for run in json.loads(message)["runs"]:
                        if match := STAGE.match(run["stage"]):
                            lags[i][int(match[1])] = received - float(match[2])
                    if len(lags[i]) == updates:
                        return
        except Exception as exc:  # a failed client is counted, not fatal
            failures[f"{type(exc).__name__} {'after' if snapshot else 'before'} snapshot"] += 1
            if not snapshot:
                settle()

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_settled.wait(), 120)
    log(f"{len(connect_ms)}/{clients} websockets connected and got their snapshot; publishing")
    await asyncio.to_thread(publish_updates, audit_id, run_id, updates, interval)
    _, pending = await asyncio.wait(tasks, timeout=10)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)

    every = [lag * 1000 for client_lags in lags for lag in client_lags.values()]
    slowest = [
        max(c[seq] for c in lags if seq in c) * 1000
        for seq in range(1, updates + 1)
        if any(seq in c for c in lags)
    ]
    return {
        "clients": clients,
        "updates": updates,
        "interval_s": interval,
        "connected": len(connect_ms),
        "failures": dict(failures),
        "connect_p50_ms": round(percentile(connect_ms, 50), 1),
        "connect_max_ms": round(max(connect_ms, default=0.0), 1),
        "got_every_update": sum(len(c) == updates for c in lags),
        "messages_received": len(every),
        "messages_expected": clients * updates,
        "lag_p50_ms": round(percentile(every, 50), 1),
        "lag_p95_ms": round(percentile(every, 95), 1),
        "lag_max_ms": round(max(every, default=0.0), 1),
        "last_client_lag_p50_ms": round(percentile(slowest, 50), 1),
        "last_client_lag_per_update_ms": [round(x, 1) for x in slowest],
    }


def measure_websockets(args: argparse.Namespace, port: int, cookie: str, audit_id: int) -> dict:
    """Sets the audit's run to running for the measurement, and puts it back after."""
    from audits.models import Audit, Run

    run = Run.objects.filter(audit_id=audit_id).first()
    audit = Audit.objects.get(pk=audit_id)
    saved_run = {f: getattr(run, f) for f in ("status", "stage", "progress_done", "progress_total")}
    saved_audit = {"status": audit.status, "finished_at": audit.finished_at}
    Run.objects.filter(pk=run.pk).update(
        status="running", stage="bench waiting", progress_done=0, progress_total=args.updates
    )
    Audit.objects.filter(pk=audit_id).update(status="running", finished_at=None)
    try:
        return asyncio.run(
            websocket_lag(
                port, cookie, audit_id, run.pk, args.websockets, args.updates, args.interval
            )
        )
    finally:
        Run.objects.filter(pk=run.pk).update(**saved_run)
        Audit.objects.filter(pk=audit_id).update(**saved_audit)


# --- Soak: every page at once, for minutes -----------------------------------------------

# What a browser fetches for one page view (the page, then the chart JSON its script loads)
# and how often a user opens it, by PAGES label. "websocket" opens the audit's progress
# socket as the audit page does, waits for its snapshot, and closes it after the charts.
# The login form is left out: every soak client is logged in.
SOAK_VISITS = [
    (3, ["audit list"]),
    (3, ["audit detail", "websocket", "chart traits x domains", "chart conditions x domains"]),
    (
        2,
        [
            "checkpoint list",
            "chart checkpoints x domains",
            "chart checkpoints x families",
            "chart transfer",
        ],
    ),
    (1, ["checkpoint search"]),
    (
        2,
        [
            "checkpoint detail, variant",
            "chart traits x domains",
            "chart conditions x domains",
            "chart helpful x domains",
        ],
    ),
    (1, ["checkpoint detail, base"]),
    (1, ["comparison"]),
    (2, ["item drill-down"]),
    (1, ["items flipped against base"]),
]
WEBSOCKET = "websocket"
# Reconnect after this long idle: gunicorn's --keep-alive (2 s by default, which its uvicorn
# worker passes on) closes idle connections, and a request sent just as it does is reset.
KEEP_ALIVE_S = 1.0


@dataclass
class Mix:
    """What one load-generator process drives: `clients` closed-loop clients, each picking
    visits at random (by weight) until `seconds` after `start_at` (Unix time)."""

    port: int
    cookie: str
    paths: dict[str, str]  # label: path, and WEBSOCKET: the socket's path
    visits: list[tuple[int, list[str]]]
    clients: int
    seconds: float
    start_at: float
    timeout: float
    seed: int
    think: float = 0.0  # mean seconds a client pauses between page views (0: none)


def drive_process(mix: Mix) -> dict:
    """One load-generator process: its clients on one event loop. Runs in a child process."""
    delay = mix.start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    cpu, wall = time.process_time(), time.perf_counter()
    result = asyncio.run(drive_mix(mix))
    result["cpu_s"] = time.process_time() - cpu
    result["wall_s"] = time.perf_counter() - wall
    return result


async def drive_mix(mix: Mix) -> dict:
    from websockets.asyncio.client import connect

    host = f"127.0.0.1:{mix.port}"
    latencies: dict[str, list[float]] = {}
    statuses: dict[str, Counter[int]] = {}
    errors: Counter[str] = Counter()
    retries: Counter[str] = Counter()
    examples: list[str] = []
    deadline = time.perf_counter() + mix.seconds
    weights = [weight for weight, _ in mix.visits]

    def failed(label: str, what: str) -> None:
        errors[f"{what} on {label}"] += 1
        if len(examples) < 20:
            examples.append(f"{time.strftime('%H:%M:%S')} {label}: {what}")

    class Connection:
        def __init__(self) -> None:
            self.reader: asyncio.StreamReader | None = None
            self.writer: asyncio.StreamWriter | None = None
            self.used = 0.0

        def close(self) -> None:
            if self.writer is not None:
                self.writer.close()
            self.reader = self.writer = None

        async def get(self, label: str) -> None:
            if self.writer is not None and time.perf_counter() - self.used > KEEP_ALIVE_S:
                self.close()
            started = time.perf_counter()
            for attempt in (1, 2):
                reused = self.writer is not None
                try:
                    status, keep_alive = await self.exchange(label)
                    break
                except TimeoutError:
                    failed(label, f"timeout after {mix.timeout:g} s")
                except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as exc:
                    self.close()
                    if reused and attempt == 1 and not getattr(exc, "partial", b""):
                        # The server closed an idle keep-alive connection as the request
                        # went out: a browser sends it again on a new one, and so does this.
                        retries[label] += 1
                        continue
                    failed(label, f"{type(exc).__name__}: {str(exc)[:80]}")
                except (OSError, ValueError) as exc:
                    failed(label, f"{type(exc).__name__}: {str(exc)[:80]}")
                self.close()
                return
            self.used = time.perf_counter()
            latencies.setdefault(label, []).append((self.used - started) * 1000)
            statuses.setdefault(label, Counter())[status] += 1
            if not 200 <= status < 400:
                failed(label, f"HTTP {status}")
            if not keep_alive:
                self.close()

        async def exchange(self, label: str) -> tuple[int, bool]:
            request = (
                f"GET {mix.paths[label]} HTTP/1.1\r\nHost: {host}\r\nCookie: {mix.cookie}\r\n"
                "Connection: keep-alive\r\n\r\n"
            ).encode()
            if self.writer is None:
                self.reader, self.writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", mix.port), mix.timeout
                )
            self.writer.write(request)
            return await asyncio.wait_for(read_response(self.reader), mix.timeout)

    async def open_websocket():
        url = f"ws://{host}{mix.paths[WEBSOCKET]}"
        headers = {"Cookie": mix.cookie, "Origin": f"http://{host}"}
        started = time.perf_counter()
        try:
            ws = await connect(
                url,
                additional_headers=headers,
                open_timeout=mix.timeout,
                ping_interval=None,
                close_timeout=mix.timeout,
            )
        except Exception as exc:  # refused, timed out, or rejected by the handshake
            failed(WEBSOCKET, f"connect: {type(exc).__name__}: {str(exc)[:80]}")
            return None
        try:
            json.loads(await asyncio.wait_for(ws.recv(), mix.timeout))
        except Exception as exc:
            failed(WEBSOCKET, f"snapshot: {type(exc).__name__}: {str(exc)[:80]}")
            await close_websocket(ws)
            return None
        latencies.setdefault(WEBSOCKET, []).append((time.perf_counter() - started) * 1000)
        statuses.setdefault(WEBSOCKET, Counter())[101] += 1
        return ws

    async def close_websocket(ws) -> None:
        try:
            await ws.close()
        except Exception as exc:
            failed(WEBSOCKET, f"close: {type(exc).__name__}: {str(exc)[:80]}")

    async def client(number: int) -> None:
        rng = random.Random(mix.seed * 1000 + number)  # noqa: S311 - a load mix, not secrets
        connection = Connection()
        await asyncio.sleep(rng.uniform(0, 0.5))  # all at once, but not in lockstep
        while time.perf_counter() < deadline:
            (_, steps) = rng.choices(mix.visits, weights)[0]
            ws = None
            for label in steps:
                if time.perf_counter() >= deadline:
                    break
                if label == WEBSOCKET:
                    ws = await open_websocket()
                else:
                    await connection.get(label)
            if ws is not None:
                await close_websocket(ws)
            if mix.think:  # a person reading the page before the next click
                await asyncio.sleep(rng.uniform(0.5 * mix.think, 1.5 * mix.think))
        connection.close()

    await asyncio.gather(*(client(i) for i in range(mix.clients)))
    return {
        "latencies": latencies,
        "statuses": {label: dict(counts) for label, counts in statuses.items()},
        "errors": dict(errors),
        "retries": dict(retries),
        "examples": examples,
    }


def drive(mix: Mix, processes: int) -> dict:
    """`mix.clients` clients split over `processes` load-generator processes started
    together; their results merged."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    processes = max(1, min(processes, mix.clients))
    shares = [mix.clients // processes + (i < mix.clients % processes) for i in range(processes)]
    start_at = time.time() + 3  # time to start the processes, so the clients begin together
    mixes = [
        Mix(**{**asdict(mix), "clients": n, "start_at": start_at, "seed": mix.seed * 10 + i})
        for i, n in enumerate(shares)
    ]
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        parts = list(pool.map(drive_process, mixes))
    merged: dict = {
        "latencies": {},
        "statuses": {},
        "errors": Counter(),
        "retries": Counter(),
        "examples": [],
    }
    for part in parts:
        for label, values in part["latencies"].items():
            merged["latencies"].setdefault(label, []).extend(values)
        for label, counts in part["statuses"].items():
            total = merged["statuses"].setdefault(label, Counter())
            total.update({int(status): n for status, n in counts.items()})
        merged["errors"].update(part["errors"])
        merged["retries"].update(part["retries"])
        merged["examples"] += part["examples"]
    merged["wall_s"] = max(part["wall_s"] for part in parts)
    merged["loadgen_cpu"] = [round(part["cpu_s"] / part["wall_s"], 2) for part in parts]
    merged["started"] = start_at
    return merged


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50), 1),
        "p95_ms": round(percentile(values, 95), 1),
        "p99_ms": round(percentile(values, 99), 1),
        "max_ms": round(max(values, default=0.0), 1),
    }


class Sampler:
    """Samples, every `every` seconds in a thread: each server process's RSS, the
    PostgreSQL connections to the bench database, and the load average."""

    def __init__(self, server: Server, database_url: str, every: float):
        import threading

        self.server, self.every = server, every
        parts = urlsplit(database_url)
        self.database = parts.path.lstrip("/")
        self.admin_url = parts._replace(path="/postgres").geturl()  # not counted itself
        self.samples: list[dict] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join()

    def loop(self) -> None:
        import psycopg

        query = (
            "SELECT count(*), count(*) FILTER (WHERE state = 'active') "
            "FROM pg_stat_activity WHERE datname = %s"
        )
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            while True:
                connections, active = conn.execute(query, [self.database]).fetchone()
                self.samples.append(
                    {
                        "t": time.time(),
                        "rss_mb": self.rss_mb(),
                        "pg_connections": connections,
                        "pg_active": active,
                        "loadavg": os.getloadavg()[0],
                    }
                )
                if self.stopping.wait(self.every):
                    return

    def rss_mb(self) -> dict[int, float]:
        found = {}
        for pid in self.server.pids():
            with contextlib.suppress(OSError, StopIteration):
                status = Path(f"/proc/{pid}/status").read_text().splitlines()
                line = next(x for x in status if x.startswith("VmRSS:"))
                found[pid] = round(int(line.split()[1]) / 1024, 1)
        return found


def read_timings(folder: Path) -> list[tuple[float, float, int, int, str, int]]:
    """bench/timed_asgi.py's lines from every server process: (end, ms, status, in flight,
    path, pid)."""
    rows = []
    for file in sorted(folder.glob("timing-*.tsv")):
        pid = int(file.stem.removeprefix("timing-"))
        for line in file.read_text(errors="replace").splitlines():
            end, ms, status, in_flight, path = line.split("\t", 4)
            rows.append((float(end), float(ms), int(status), int(in_flight), path, pid))
    return rows


def server_times(rows: list, start: float, stop: float, labels: dict[str, str]) -> dict:
    """Server-time percentiles per page label (and "all pages", websockets apart) of the
    requests that ended between start and stop."""
    by_label: dict[str, list[float]] = {}
    in_flight: dict[str, int] = {}
    statuses: Counter[str] = Counter()
    for end, ms, status, flight, path, _ in rows:
        if not start <= end < stop:
            continue
        label = labels.get(path, WEBSOCKET if path.startswith("ws:") else path)
        by_label.setdefault(label, []).append(ms)
        if label != WEBSOCKET:
            by_label.setdefault("all pages", []).append(ms)
            in_flight["all pages"] = max(in_flight.get("all pages", 0), flight)
            statuses[str(status)] += 1
    found = {label: summary(values) for label, values in by_label.items()}
    if "all pages" in found:
        found["all pages"]["max_in_flight_per_worker"] = in_flight["all pages"]
        found["all pages"]["statuses"] = dict(statuses)
    return found


def per_minute(rows: list, samples: list[dict], start: float, stop: float) -> list[dict]:
    """The soak minute by minute: requests, server p50/p95, and the samples' peaks."""
    minutes = []
    for m in range(math.ceil((stop - start) / 60)):
        low, high = start + 60 * m, min(stop, start + 60 * (m + 1))
        times = [ms for end, ms, _, _, path, _ in rows if low <= end < high and path[:3] != "ws:"]
        window = [s for s in samples if low <= s["t"] < high]
        minutes.append(
            {
                "minute": m + 1,
                "requests": len(times),
                "rps": round(len(times) / max(high - low, 1e-9), 1),
                "server_p50_ms": round(percentile(times, 50), 1),
                "server_p95_ms": round(percentile(times, 95), 1),
                "workers_rss_mb_max": max(
                    (max(s["rss_mb"].values(), default=0) for s in window), default=0
                ),
                "pg_connections_max": max((s["pg_connections"] for s in window), default=0),
                "loadavg_max": round(max((s["loadavg"] for s in window), default=0), 2),
            }
        )
    return minutes


def soak(args: argparse.Namespace, env: dict[str, str]) -> dict:
    """All clients on a mix of every page for args.soak seconds, between two static-file
    baselines of args.seconds each; server time from bench/timed_asgi.py."""
    manage(env, "migrate", "--no-input", "-v", "0")
    setup_django()
    from django.db import connection

    try:
        seeded = is_seeded()
    except Exception:  # a missing database or table reads as "not seeded"
        seeded = False
    if not seeded:
        raise SystemExit("keel_bench is not seeded: run bench/dashboard_load.py --seed first")
    ids = page_ids()
    pages = dict(PAGES)
    unknown = {step for _, steps in SOAK_VISITS for step in steps} - {*pages, WEBSOCKET}
    if unknown:
        raise SystemExit(f"SOAK_VISITS names pages that PAGES lacks: {sorted(unknown)}")
    used = {step for _, steps in SOAK_VISITS for step in steps} - {WEBSOCKET}
    paths = {label: path.format(**ids) for label, path in PAGES if label in used}
    log(f"in-process query counts and times ({len(paths)} pages)")
    infos = {info.label: info for info in inspect_pages([BASELINE, *paths.items()])}
    connection.close()

    import redis

    redis.Redis.from_url(args.redis_url).flushdb()  # only the bench's own Redis database
    log("collectstatic")
    manage(env, "collectstatic", "--no-input", "-v", "0")
    timing_dir = args.data_dir / "timing"
    shutil.rmtree(timing_dir, ignore_errors=True)
    timing_dir.mkdir(parents=True)
    server_env = {**env, "KEEL_BENCH_TIMING_DIR": str(timing_dir)}
    if args.preload:
        server_env["KEEL_BENCH_IMPORT_URLCONF"] = "1"
    if args.db_pool is not None:
        server_env["KEEL_DB_POOL"] = str(args.db_pool)
    if args.web_requests is not None:
        server_env["KEEL_WEB_REQUESTS"] = str(args.web_requests)
    log_path = args.data_dir / "soak-server.log"
    app = "bench.timed_asgi:application"
    server = Server(server_env, args.workers, log_path, app=app, preload=args.preload)
    processes = args.loadgen_processes or os.cpu_count() or 1
    results: dict = {
        "config": {
            "soak_s": args.soak,
            "think_s": args.think,
            "baseline_s": args.seconds,
            "clients": args.clients,
            "workers": args.workers,
            "loadgen_processes": processes,
            "timeout_s": args.timeout,
            "sample_every_s": args.sample_every,
            "preload": args.preload,
            "db_pool": args.db_pool,
            "web_requests": args.web_requests,
            "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(),
            "ids": ids,
            "visits": SOAK_VISITS,
        },
        "skipped": [],
    }
    with server:
        try:
            cookie = login(server.port)
        except OSError as exc:
            raise SystemExit(
                f"logging in failed: {type(exc).__name__}: {exc}\nserver log:\n{server.log_tail()}"
            ) from exc
        log(f"logged in; server on port {server.port}")
        for label, path in list(paths.items()):
            status = infos[label].status
            if status == 200:
                status = probe(server.port, label, path, cookie, server)
            if status != 200:
                results["skipped"].append({"label": label, "path": path, "status": status})
                del paths[label]
        visits = [
            (w, [s for s in steps if s in paths or s == WEBSOCKET]) for w, steps in SOAK_VISITS
        ]
        visits = [(w, steps) for w, steps in visits if [s for s in steps if s != WEBSOCKET]]
        paths[WEBSOCKET] = f"/ws/audits/{ids['audit']}/"

        def phase(name: str, visits: list, seconds: float, clients: int) -> dict:
            every_path = {**paths, BASELINE[0]: BASELINE[1]}
            mix = Mix(server.port, cookie, every_path, visits, clients, seconds, 0, args.timeout, 1,
                      args.think)  # fmt: skip
            log(f"{name}: {clients} clients for {seconds:g} s")
            driven = drive(mix, processes)
            # the requests that ended from the clients' start until the server went idle
            driven["busy_after_s"] = server.wait_idle()
            driven["window"] = (driven["started"], time.time())
            return driven

        phase("warm-up", visits, args.warmup + 2, min(args.clients, 2 * args.workers))
        before = phase("baseline before", [(1, [BASELINE[0]])], args.seconds, args.clients)
        with Sampler(server, args.database_url, args.sample_every) as sampler:
            mixed = phase("soak", visits, args.soak, args.clients)
        after = phase("baseline after", [(1, [BASELINE[0]])], args.seconds, args.clients)
    time.sleep(0.5)
    rows = read_timings(timing_dir)
    labels = {path: label for label, path in paths.items()} | {BASELINE[1]: BASELINE[0]}

    def report(driven: dict) -> dict:
        start, stop = driven["window"]
        everything = [
            ms
            for label, values in driven["latencies"].items()
            if label != WEBSOCKET
            for ms in values
        ]
        requests = len(everything)
        errors = sum(driven["errors"].values())
        return {
            "requests": requests,
            "websockets": len(driven["latencies"].get(WEBSOCKET, [])),
            "errors": errors,
            "error_kinds": dict(driven["errors"].most_common()),
            "error_examples": driven["examples"][:20],
            "keep_alive_retries": dict(driven["retries"]),
            "seconds": round(driven["wall_s"], 1),
            "rps": round(requests / driven["wall_s"], 1),
            "client": {label: summary(v) for label, v in driven["latencies"].items()}
            | {"all pages": summary(everything)},
            "statuses": {label: dict(c) for label, c in driven["statuses"].items()},
            "server": server_times(rows, start, stop, labels),
            "loadgen_cpu": driven["loadgen_cpu"],
            "busy_after_s": driven["busy_after_s"],
        }

    results["baseline_before"] = report(before)
    results["baseline_after"] = report(after)
    results["soak"] = report(mixed)
    results["in_process"] = {
        label: {"queries": info.queries, "ms": round(info.server_ms, 1)}
        for label, info in infos.items()
    }
    results["paths"] = paths
    samples = sampler.samples
    pids = sorted({pid for s in samples for pid in s["rss_mb"]})
    master = server.process.pid
    results["processes"] = {
        str(pid): {
            "role": "master" if pid == master else "worker",
            "rss_first_mb": next(s["rss_mb"][pid] for s in samples if pid in s["rss_mb"]),
            "rss_peak_mb": max(s["rss_mb"].get(pid, 0) for s in samples),
            "rss_last_mb": [s["rss_mb"][pid] for s in samples if pid in s["rss_mb"]][-1],
        }
        for pid in pids
    }
    results["pg_connections_peak"] = max((s["pg_connections"] for s in samples), default=0)
    results["pg_active_peak"] = max((s["pg_active"] for s in samples), default=0)
    results["loadavg_during"] = {
        "mean": round(statistics.fmean(s["loadavg"] for s in samples), 2) if samples else 0,
        "max": round(max((s["loadavg"] for s in samples), default=0), 2),
    }
    results["samples"] = len(samples)
    results["minutes"] = per_minute(rows, samples, mixed["started"], mixed["started"] + args.soak)
    server_log = log_path.read_text(errors="replace")
    results["server_exceptions"] = logged_exceptions(server_log)
    results["worker_boots"] = server_log.count("Booting worker")
    results["worker_timeouts"] = server_log.count("WORKER TIMEOUT")
    baselines = (results["baseline_before"], results["baseline_after"])
    results["baseline_p95_ms"] = {
        side: round(
            statistics.fmean(b[side].get("all pages", {}).get("p95_ms", 0) for b in baselines), 1
        )
        for side in ("client", "server")
    }
    return results


# --- Run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace, env: dict[str, str]) -> dict:
    manage(env, "migrate", "--no-input", "-v", "0")  # the code may have moved on since --seed
    setup_django()
    from django.db import connection

    try:
        seeded = is_seeded()
    except Exception:  # a missing database or table reads as "not seeded"
        seeded = False
    if not seeded:
        raise SystemExit("keel_bench is not seeded: run bench/dashboard_load.py --seed first")
    ids = page_ids()
    pages = [(label, path.format(**ids)) for label, path in PAGES]
    if args.only:
        pages = [p for p in pages if any(word in f"{p[0]} {p[1]}" for word in args.only)]
    log(f"counting queries in-process ({len(pages)} pages)")
    infos = {info.path: info for info in inspect_pages([BASELINE, *pages])}
    connection.close()  # the server and the publisher thread use their own connections

    import redis

    redis.Redis.from_url(args.redis_url).flushdb()  # only the bench's own Redis database
    log("collectstatic")
    manage(env, "collectstatic", "--no-input", "-v", "0")
    driver = args.driver
    if driver == "auto":
        driver = "wrk" if shutil.which("wrk") else "python"
    results: dict = {
        "config": {
            "clients": args.clients,
            "seconds": args.seconds,
            "workers": args.workers,
            "driver": driver,
            "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(),
            "ids": ids,
        },
        "pages": [],
        "skipped": [],
    }
    server = Server(env, args.workers, args.data_dir / "server.log")
    with server:
        cookie = login(server.port)
        log(f"logged in; server on port {server.port}, load by {driver}")

        def measure(label: str, path: str) -> dict:
            few = min(args.clients, 2 * args.workers)  # fills caches, leaves little backlog
            if args.warmup:
                load(driver, server.port, path, cookie, few, args.warmup)
                server.wait_idle()
            result = load(driver, server.port, path, cookie, args.clients, args.seconds)
            drained = server.wait_idle()
            log(
                f"{label}: {result.rps} req/s, p95 {result.p95_ms:.1f} ms, {result.errors} "
                f"errors; server busy for {drained} s after"
            )
            info = infos[path]
            return {
                "label": label,
                "path": path,
                "queries": info.queries,
                "repeated": info.repeated,
                "repeated_sql": info.repeated_sql[:300],
                "server_ms": round(info.server_ms, 2),
                "cold_ms": round(info.cold_ms, 1),
                **asdict(result),
                "drain_s": drained,
            }

        baseline_before = measure(*BASELINE)
        for label, path in pages:
            status = infos[path].status
            if status == 200:
                status = probe(server.port, label, path, cookie, server)
            if status != 200:
                results["skipped"].append({"label": label, "path": path, "status": status})
                continue
            results["pages"].append(measure(label, path))
        baseline_after = measure(*BASELINE)
        baseline = (baseline_before["p95_ms"] + baseline_after["p95_ms"]) / 2
        results["baseline"] = {
            "before": baseline_before,
            "after": baseline_after,
            "p95_ms": baseline,
        }
        for page in results["pages"]:
            page["p95_ratio"] = round(page["p95_ms"] / baseline, 1) if baseline else None
        if args.websockets:
            log(f"websockets: {args.websockets} clients on audit {ids['audit']}")
            results["websockets"] = measure_websockets(args, server.port, cookie, int(ids["audit"]))
        failing = [p["path"] for p in results["pages"] if p["server_errors"]]
        if failing:
            results["server_log_tail"] = server.log_tail()
    results["server_error_pages"] = failing
    results["server_exceptions"] = logged_exceptions(server.log_path.read_text(errors="replace"))
    return results


def logged_exceptions(log_text: str) -> dict[str, int]:
    """The server log's exceptions by their last traceback line (type and message)."""
    found: Counter[str] = Counter()
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last):"):
            tail = next((x for x in lines[i + 1 :] if not x.startswith((" ", "\t"))), "")
            found[re.sub(r"\d{3,}", "N", tail)[:200]] += 1
    return dict(found.most_common(10))


def markdown(results: dict) -> str:
    config = results["config"]
    lines = [
        f"{config['clients']} clients x {config['seconds']} s per page, {config['workers']} "
        f"workers, load by {config['driver']}, "
        f"{config['cpus']} CPUs, "
        f"load average at start {', '.join(f'{x:.2f}' for x in config['loadavg_at_start'])}",
        "",
        "| page | path | queries | most repeated | in-process ms (first) | req/s | p50 ms | p95 ms "
        "| p99 ms | p95 ÷ baseline | errors | busy after, s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    baseline = results["baseline"]
    rows = [baseline["before"], *results["pages"], baseline["after"]]
    for row in rows:
        ratio = row.get("p95_ratio") or f"1 (mean {baseline['p95_ms']:.1f} ms)"
        lines.append(
            f"| {row['label']} | `{row['path']}` | {row['queries']} | {row['repeated']}× "
            f"| {row['server_ms']:.1f} ({row['cold_ms']:.0f}) | {row['rps']:.0f} "
            f"| {row['p50_ms']:.1f} "
            f"| {row['p95_ms']:.1f} | {row['p99_ms']:.1f} "
            f"| {ratio} "
            f"| {row['errors']} | {row['drain_s']} |"
        )
    for page in results["skipped"]:
        lines.append(
            f"| {page['label']} | `{page['path']}` | skipped: {page['status']} | | | | | | | | | |"
        )
    ws = results.get("websockets")
    if ws:
        lines += [
            "",
            f"Websockets: {ws['connected']}/{ws['clients']} connected (connect + snapshot p50 "
            f"{ws['connect_p50_ms']} ms, max {ws['connect_max_ms']} ms); {ws['updates']} updates "
            f"every {ws['interval_s']} s.",
            "",
            "| clients with every update | messages | lag p50 ms | lag p95 ms | lag max ms "
            "| until the last client, p50 ms |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| {ws['got_every_update']}/{ws['clients']} | {ws['messages_received']}/"
            f"{ws['messages_expected']} | {ws['lag_p50_ms']} | {ws['lag_p95_ms']} "
            f"| {ws['lag_max_ms']} | {ws['last_client_lag_p50_ms']} |",
        ]
    if results["server_exceptions"]:
        lines += ["", "Exceptions in the server log:"]
        lines += [f"- {n}× {text}" for text, n in results["server_exceptions"].items()]
    return "\n".join(lines)


def soak_failures(results: dict) -> list[str]:
    """Why the soak failed: any error on any request or websocket, in a baseline too, any
    exception in the server log, any worker the server had to restart."""
    found = []
    for name in ("baseline_before", "soak", "baseline_after"):
        if results[name]["errors"]:
            found.append(f"{results[name]['errors']} errors in {name.replace('_', ' ')}")
    if results["server_exceptions"]:
        found.append(f"{sum(results['server_exceptions'].values())} exceptions in the server log")
    if results["worker_timeouts"]:
        found.append(f"{results['worker_timeouts']} worker timeouts")
    return found


def soak_markdown(results: dict) -> str:
    config, soaked = results["config"], results["soak"]
    base = results["baseline_p95_ms"]
    loadavg = results["loadavg_during"]
    serving = " (gunicorn --preload)" if config["preload"] else ""
    pool = "Keel's default" if config["db_pool"] is None else config["db_pool"]
    serving += f" with KEEL_DB_POOL {pool} (database connections each)"
    gate = "Keel's default" if config.get("web_requests") is None else config["web_requests"]
    serving += f" and KEEL_WEB_REQUESTS {gate}"
    if config.get("think_s"):
        serving += f", clients pausing {config['think_s']:g} s on average between page views"
    lines = [
        f"{config['clients']} clients for {config['soak_s']:g} s on the mix, "
        f"{config['workers']} server workers{serving}, {config['loadgen_processes']} "
        "load-generator "
        f"processes, {config['cpus']} CPUs; load average at start "
        f"{', '.join(f'{x:.2f}' for x in config['loadavg_at_start'])}, during the soak mean "
        f"{loadavg['mean']} and max {loadavg['max']} (1-minute).",
        "",
        "| phase | requests | websockets | errors | req/s | client p50 ms | client p95 ms "
        "| client p99 ms | server p50 ms | server p95 ms | server p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("baseline_before", "soak", "baseline_after"):
        phase = results[name]
        client, server = phase["client"]["all pages"], phase["server"].get("all pages", {})
        lines.append(
            f"| {name.replace('_', ' ')} | {phase['requests']} | {phase['websockets']} "
            f"| {phase['errors']} | {phase['rps']} | {client['p50_ms']} | {client['p95_ms']} "
            f"| {client['p99_ms']} | {server.get('p50_ms', '')} | {server.get('p95_ms', '')} "
            f"| {server.get('p99_ms', '')} |"
        )
    lines += [
        "",
        f"Baseline (static file, mean of before and after): client p95 {base['client']} ms, "
        f"server p95 {base['server']} ms. Soak p95 ÷ baseline p95: client "
        f"{ratio(soaked['client']['all pages']['p95_ms'], base['client'])}, server "
        f"{ratio(soaked['server'].get('all pages', {}).get('p95_ms', 0), base['server'])}.",
        "",
        "| page | path | requests | errors | client p95 ms | server p50 ms | server p95 ms "
        "| server p99 ms | server p95 ÷ baseline | alone ms (queries) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    errors_by_label: Counter[str] = Counter()
    for kind, n in soaked["error_kinds"].items():
        errors_by_label[kind.rsplit(" on ", 1)[-1]] += n
    labels = [*results["paths"], "all pages"]
    for label in labels:
        client = soaked["client"].get(label, {})
        server = soaked["server"].get(label, {})
        alone = results["in_process"].get(label)
        alone_text = f"{alone['ms']} ({alone['queries']})" if alone else ""
        path = results["paths"].get(label, "")
        lines.append(
            f"| {label} | {f'`{path}`' if path else ''} | {client.get('n', 0)} "
            f"| {errors_by_label[label] if label != 'all pages' else soaked['errors']} "
            f"| {client.get('p95_ms', '')} | {server.get('p50_ms', '')} "
            f"| {server.get('p95_ms', '')} | {server.get('p99_ms', '')} "
            f"| {ratio(server.get('p95_ms', 0), base['server'])} "
            f"| {alone_text} |"
        )
    for page in results["skipped"]:
        lines.append(f"| {page['label']} | `{page['path']}` | skipped: {page['status']} |||||||")
    lines += ["", "| server process | RSS first MB | RSS peak MB | RSS last MB |"]
    lines.append("| --- | ---: | ---: | ---: |")
    for pid, proc in results["processes"].items():
        lines.append(
            f"| {proc['role']} {pid} | {proc['rss_first_mb']} | {proc['rss_peak_mb']} "
            f"| {proc['rss_last_mb']} |"
        )
    all_pages = soaked["server"].get("all pages", {})
    lines += [
        "",
        f"PostgreSQL connections to the bench database: peak {results['pg_connections_peak']} "
        f"(peak active {results['pg_active_peak']}), {results['samples']} samples every "
        f"{config['sample_every_s']:g} s. Most requests in flight in one worker: "
        f"{all_pages.get('max_in_flight_per_worker', 0)}. Server statuses: "
        f"{all_pages.get('statuses', {})}. Load generator CPU, per process, fraction of a "
        f"core: {soaked['loadgen_cpu']}. Requests sent again after the server closed an idle "
        f"keep-alive connection (as a browser does): "
        f"{sum(soaked.get('keep_alive_retries', {}).values())}. "
        f"Workers booted: {results['worker_boots']}, worker "
        f"timeouts: {results['worker_timeouts']}. Server busy after the soak: "
        f"{soaked['busy_after_s']} s.",
        "",
        "| minute | requests | req/s | server p50 ms | server p95 ms | worker RSS max MB "
        "| PostgreSQL connections max | load average max |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in results["minutes"]:
        lines.append(
            f"| {m['minute']} | {m['requests']} | {m['rps']} | {m['server_p50_ms']} "
            f"| {m['server_p95_ms']} | {m['workers_rss_mb_max']} | {m['pg_connections_max']} "
            f"| {m['loadavg_max']} |"
        )
    for name in ("baseline_before", "soak", "baseline_after"):
        if results[name]["errors"]:
            lines += ["", f"Errors in {name.replace('_', ' ')}:"]
            lines += [f"- {n}× {kind}" for kind, n in results[name]["error_kinds"].items()]
            lines += [f"  - {example}" for example in results[name]["error_examples"][:10]]
    if results["server_exceptions"]:
        lines += ["", "Exceptions in the server log:"]
        lines += [f"- {n}× {text}" for text, n in results["server_exceptions"].items()]
    return "\n".join(lines)


def ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.1f}" if baseline and value else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", action="store_true", help="create and fill keel_bench, then exit")
    parser.add_argument("--reseed", action="store_true", help="drop keel_bench and seed it again")
    parser.add_argument("--seconds", type=float, default=15, help="load per page (default 15)")
    parser.add_argument("--warmup", type=float, default=1, help="unmeasured load first (s)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent HTTP clients")
    parser.add_argument(
        "--only", action="append", metavar="TEXT", help="only pages whose label or path has TEXT"
    )
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--driver", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--websockets",
        type=int,
        default=0,
        metavar="N",
        help="then measure progress lag on N websocket clients",
    )
    parser.add_argument("--updates", type=int, default=20, help="progress updates to publish")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between updates")
    parser.add_argument(
        "--soak",
        type=float,
        default=0,
        metavar="SECONDS",
        help="instead: all --clients at once on a mix of every page for SECONDS",
    )
    parser.add_argument(
        "--think",
        type=float,
        default=0,
        metavar="SECONDS",
        help="with --soak: mean pause between a client's page views (default 0: none)",
    )
    parser.add_argument(
        "--loadgen-processes",
        type=int,
        default=0,
        help="soak load-generator processes (default: one per CPU)",
    )
    parser.add_argument("--timeout", type=float, default=60, help="soak request timeout (s)")
    parser.add_argument(
        "--preload",
        action="store_true",
        help="soak: gunicorn --preload, the URLconf imported before the workers fork",
    )
    parser.add_argument(
        "--db-pool",
        type=int,
        default=None,
        metavar="N",
        help="soak: KEEL_DB_POOL for the server, pooled connections per worker (0: none; "
        "default: Keel's own, 10)",
    )
    parser.add_argument(
        "--web-requests",
        type=int,
        default=None,
        metavar="N",
        help="soak: KEEL_WEB_REQUESTS for the server, HTTP requests in Django at once per "
        "worker (0: no limit; default: Keel's own, the pool's size - 2)",
    )
    parser.add_argument(
        "--sample-every", type=float, default=1, help="soak RSS and connection sampling (s)"
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--database-url", default=f"postgres://postgres@127.0.0.1:5432/{DATABASE}")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "keel-bench-data"
    )
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    env = configure(args)
    if args.seed or args.reseed:
        seed(args, env)
        return 0
    if args.soak:
        results = soak(args, env)
        print(json.dumps(results, indent=2) if args.json else soak_markdown(results))
        if failures := soak_failures(results):
            log(f"FAILED: {'; '.join(failures)}")
            return 1
        return 0
    results = run(args, env)
    print(json.dumps(results, indent=2) if args.json else markdown(results))
    if results["server_error_pages"]:
        log(f"FAILED: 5xx under load on {', '.join(results['server_error_pages'])}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
