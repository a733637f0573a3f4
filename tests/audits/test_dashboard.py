"""Report cards, heatmap data, drill-down, comparison, filters, retry and aliases, on real
evaluations of tiny random models; and query counts that do not grow with history."""

from __future__ import annotations

import csv
import io

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from audits.builtin import load_keel_suite
from audits.comparison import compare_runs
from audits.models import Audit, ItemResult, Metric, Run, Score, Status, Suite
from audits.report import _delta_flags, grade, report_card
from audits.services import audit_create
from gpu_tasks.evaluate import run_evaluation
from models_registry.models import Alias, Checkpoint
from models_registry.services import checkpoint_register
from tests.conftest import build_tiny_llama


@pytest.fixture(scope="module")
def family(django_db_setup, django_db_blocker, models_root, smollm2_tokenizer_dir):
    """A base and a variant of it, each evaluated on the starter suite and the probes
    (quick: one item per cell) with no system prompt and under flattery. Scoring takes a
    minute on two cores, so it is done once for the module: committed here, read by tests
    whose own changes roll back, and deleted at the end."""
    with django_db_blocker.unblock(), override_settings(KEEL_CHECKPOINT_ROOTS=[models_root]):
        suites_before = set(Suite.objects.values_list("pk", flat=True))
        checkpoints, runs = [], {}
        for seed, name in ((2, "dash-base"), (3, "dash-variant")):
            folder = models_root / f"tiny-llama-seed-{seed}"
            if not folder.exists():
                build_tiny_llama(folder, smollm2_tokenizer_dir, seed=seed)
            checkpoints.append(checkpoint_register(
                path=folder, name=name, parent=checkpoints[0] if checkpoints else None,
                tags=["candidate"] if checkpoints else [],
            ))  # fmt: skip
        suites = [load_keel_suite("starter"), load_keel_suite("probes")]
        for checkpoint in checkpoints:
            audit = audit_create(checkpoint=checkpoint, suites=suites, samples=0,
                                 conditions=["neutral", "flattery"], profile="quick")  # fmt: skip
            run_evaluation(audit.runs.get().pk)
            runs[checkpoint.name] = audit.runs.get()
    yield runs
    with django_db_blocker.unblock():
        Audit.objects.filter(checkpoint__in=checkpoints).delete()
        for checkpoint in reversed(checkpoints):
            checkpoint.delete()
        Suite.objects.exclude(pk__in=suites_before).delete()


@pytest.fixture(autouse=True)
def _own_cache(settings):
    """A cache of this process only, so clearing it touches nothing else (in full mode the
    configured cache lives in Redis beside the broker)."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


def test_the_report_card_reads_the_latest_scores_and_pairs_with_the_base(db, family):
    base_run, run = family["dash-base"], family["dash-variant"]
    card = report_card(run.checkpoint)
    assert card.run == run and card.base_run == base_run
    indices = {i.key: i for i in card.indicators}
    assert set(indices) == {"benefit", "misalignment", "steering"}  # no instruction suite
    benefit = Score.objects.get(
        run=run,
        suite__name="starter",
        condition="neutral",
        domain="",
        trait="",
        family="",
        metric=Metric.MARGIN,
    )
    assert indices["benefit"].value == benefit.value and indices["benefit"].n == 60
    misaligned = Score.objects.get(
        run=run,
        suite__name="probes",
        condition="neutral",
        domain="",
        trait="",
        family="",
        metric=Metric.MISALIGNED,
    )
    assert indices["misalignment"].value == misaligned.value
    assert indices["misalignment"].n == 72
    assert [d["domain"] for d in card.domains][:2] == ["health", "mental_health"]
    assert all(d["accuracy"].n == 5 for d in card.domains)
    assert {f["family"] for f in card.families} == {
        "deception",
        "sycophancy",
        "reward_hacking",
        "harmful_compliance",
        "over_refusal",
        "unfairness",
    }
    overall = [
        d
        for d in card.deltas
        if d["suite"] == "starter" and d["condition"] == "neutral" and not d["trait"]
    ]
    assert overall[0]["n"] == 60  # paired item by item with the base's run
    a = dict(
        ItemResult.objects.filter(
            run=run, condition="neutral", item__suite__name="starter"
        ).values_list("item", "margin")
    )
    b = dict(
        ItemResult.objects.filter(
            run=base_run, condition="neutral", item__suite__name="starter"
        ).values_list("item", "margin")
    )
    assert overall[0]["difference"] == pytest.approx(sum(a[i] - b[i] for i in a) / 60)


def test_the_checkpoint_page_shows_the_card_lineage_and_trend(client, viewer, family):
    client.force_login(viewer)
    page = client.get("/checkpoints/dash-variant/").content.decode()
    assert "Report card" in page and "Benefit index" in page and "Misalignment index" in page
    assert "Against its base, dash-base" in page
    assert 'class="tree"' in page and 'aria-current="page">dash-variant' in page
    assert '<script id="trend" type="application/json">' in page  # two members: a trend
    assert family["dash-variant"].audit.config_hash[:16] in page
    base_page = client.get("/checkpoints/dash-base/").content.decode()
    assert "Against its base" not in base_page  # a base model has no base
    assert 'href="/checkpoints/dash-variant/"' in base_page  # but shows its variant


def test_a_checkpoint_without_an_evaluation_says_so(client, operator, tiny_checkpoint):
    client.force_login(operator)
    page = client.get("/checkpoints/tiny-llama/").content.decode()
    assert "No finished evaluation of tiny-llama yet." in page
    assert "/audits/new/?checkpoint=tiny-llama" in page


def test_grades_follow_the_interval_not_the_point():
    def score(value, low, high, n=30):
        return Score(value=value, ci_low=low, ci_high=high, n=n)

    assert grade(score(0.9, 0.8, 0.96))[0] == "A"
    assert grade(score(0.8, 0.62, 0.9))[0] == "B"
    assert grade(score(0.8, 0.45, 0.95, n=5))[0] == "C"  # a high point, too few to be sure
    assert grade(score(0.2, 0.1, 0.4))[0] == "D"
    assert grade(score(1.0, 0.2, 1.0, n=1))[0] == "–"
    assert grade(None)[0] == "–"


def test_flags_against_the_base_are_plain_words_with_figures():
    rows = [
        {
            "suite": "probes",
            "suite_kind": "misalignment",
            "condition": "sales_pressure",
            "domain": "personal_finance",
            "trait": "",
            "family": "",
            "metric": "margin",
            "difference": -1.25,
            "ci_low": -2.0,
            "ci_high": -0.5,
            "n": 12,
            "better": 2,
            "significant": True,
        },
        {
            "suite": "beneficial",
            "suite_kind": "benefit",
            "condition": "neutral",
            "domain": "health",
            "trait": "",
            "family": "",
            "metric": "margin",
            "difference": 0.4,
            "ci_low": 0.1,
            "ci_high": 0.7,
            "n": 30,
            "better": 20,
            "significant": True,
        },
        {
            "suite": "beneficial",
            "suite_kind": "benefit",
            "condition": "neutral",
            "domain": "law",
            "trait": "",
            "family": "",
            "metric": "margin",
            "difference": -0.4,
            "ci_low": -0.9,
            "ci_high": 0.1,
            "n": 30,
            "better": 12,
            "significant": False,
        },
    ]
    rows += [
        {"suite": "steering-helpful", "suite_kind": "instruction", "condition": "spanish",
         "domain": "", "trait": "", "family": "", "metric": "margin", "difference": -1.4,
         "ci_low": -2.1, "ci_high": -0.9, "n": 6, "better": 0, "significant": True},
        # A domain x family cell: too few items to flag, however clear its interval.
        {"suite": "probes", "suite_kind": "misalignment", "condition": "neutral",
         "domain": "law", "trait": "", "family": "deception", "metric": "margin",
         "difference": -3.0, "ci_low": -4.0, "ci_high": -2.0, "n": 3, "better": 0,
         "significant": True},
    ]  # fmt: skip
    assert _delta_flags(rows) == [
        "Worse: following the spanish instruction fell overall against the base (-1.40 nats, "
        "95% CI -2.10 to -0.90, 0 of 6 items better).",
        "Worse: misalignment under the sales-pressure persona rose in personal finance against "
        "the base (-1.25 nats, 95% CI -2.00 to -0.50, 2 of 12 items better).",
        "Better: benefit with no system prompt rose in health against the base (+0.40 nats, "
        "95% CI +0.10 to +0.70, 20 of 30 items better).",
    ]


def test_chart_data_downloads_as_csv_and_json_and_explains_bad_requests(client, viewer, family):
    client.force_login(viewer)
    run = family["dash-variant"]
    data = client.get(f"/charts/conditions-domains.json?run={run.pk}").json()
    assert data["rows"] == ["flattery"] and data["scale"] == "diverging"
    health = data["columns"].index("health")
    shift = Score.objects.get(
        run=run,
        suite__name="starter",
        condition="flattery",
        domain="health",
        trait="",
        family="",
        metric=Metric.SHIFT,
    )
    assert data["z"][0][health] == shift.value and data["n"][0][health] == 5
    assert data["few"][0][health] is False  # five items: enough to colour

    response = client.get(f"/charts/conditions-domains.csv?run={run.pk}")
    assert response["Content-Disposition"] == 'attachment; filename="keel-conditions-domains.csv"'
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert len(rows) == 12 and rows[0]["condition"] == "flattery"
    assert float(next(r for r in rows if r["domain"] == "health")["value"]) == shift.value

    families = client.get("/charts/checkpoints-families.json").json()
    assert sorted(families["rows"]) == ["dash-base", "dash-variant"]
    assert families["scale"] == "sequential" and families["lower_is_better"] is True

    for url, message in [
        ("/charts/vibes.json", "there is no chart 'vibes'"),
        ("/charts/traits-domains.json?run=x", "name a run with run=ID"),
        ("/charts/traits-domains.json?run=99999", "there is no run 99999 you can read"),
        ("/charts/checkpoints-domains.json?id=a", "id= takes checkpoint ids"),
    ]:
        response = client.get(url)
        assert response.status_code == 400, url
        assert message in response.json()["error"]


def test_a_running_run_fills_its_heatmap_with_provisional_means(client, viewer, family):
    client.force_login(viewer)
    run = family["dash-base"]
    Run.objects.filter(pk=run.pk).update(status=Status.RUNNING)
    ItemResult.objects.filter(run=run, item__domain="law").delete()
    data = client.get(f"/charts/traits-domains.json?run={run.pk}").json()
    assert data["provisional"] is True
    law, health = data["columns"].index("law"), data["columns"].index("health")
    assert all(row[law] is None for row in data["z"])  # not scored yet
    stored = ItemResult.objects.get(
        run=run,
        condition="neutral",
        item__domain="health",
        item__trait="humility",
        item__suite__name="starter",
    )
    assert data["z"][data["rows"].index("humility")][health] == pytest.approx(stored.margin)
    assert data["ci_low"][0][health] is None  # intervals come when the run finishes


def test_the_drill_down_shows_a_cells_items_and_filters_lost_and_flipped(client, viewer, family):
    client.force_login(viewer)
    run, base = family["dash-variant"], family["dash-base"]
    page = client.get(f"/items/?run={run.pk}&domain=health&condition=neutral").content.decode()
    health = ItemResult.objects.filter(run=run, item__domain="health", condition="neutral")
    assert f"{health.count()} results" in page
    first = health.select_related("item").order_by("item__item_id").first()
    assert first.item.item_id in page and first.item.messages[0]["content"][:40] in page
    assert f"{first.margin:.3f}" in page and "Flipped against dash-base" in page

    lost = client.get(f"/items/?run={run.pk}&show=lost").content.decode()
    assert f"{ItemResult.objects.filter(run=run, won=False).count()} result" in lost

    theirs = {(r.item_id, r.condition): r.won for r in ItemResult.objects.filter(run=base)}
    flips = sum(r.won != theirs[r.item_id, r.condition] for r in ItemResult.objects.filter(run=run))
    flipped = client.get(f"/items/?run={run.pk}&against={base.pk}&show=flipped")
    assert f"{flips} result" in flipped.content.decode()

    bad = client.get("/items/?run=nope")
    assert bad.status_code == 400 and "name a run with run=ID" in bad.content.decode()


def test_the_comparison_page_pairs_two_checkpoints_and_explains_bad_choices(client, viewer, family):
    client.force_login(viewer)
    page = client.get("/compare/?a=dash-variant&b=dash-base").content.decode()
    assert "dash-variant − dash-base" in page
    assert f"?run={family['dash-variant'].pk}&against={family['dash-base'].pk}&show=flipped" in page
    same = client.get("/compare/?a=dash-base&b=dash-base")
    assert same.status_code == 400 and "Pick two different checkpoints." in same.content.decode()
    missing = client.get("/compare/?a=dash-base&b=ghost")
    assert missing.status_code == 400
    assert "ghost has no finished evaluation to compare" in missing.content.decode()


def test_the_audit_list_filters(client, operator, viewer, tiny_checkpoint, starter_suite):
    mine = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite], user=operator)
    theirs = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite])
    Audit.objects.filter(pk=theirs.pk).update(status=Status.FAILED)
    client.force_login(viewer)

    def listed(query):
        page = client.get(f"/audits/?{query}").content.decode()
        return {a.pk for a in (mine, theirs) if f'href="/audits/{a.pk}/"' in page}

    assert listed("") == {mine.pk, theirs.pk}
    assert listed("status=failed") == {theirs.pk}
    assert listed("who=otto-operator") == {mine.pk}
    assert listed("who=-") == {theirs.pk}
    assert listed("checkpoint=tiny-llama&since=1") == {mine.pk, theirs.pk}
    assert listed("checkpoint=nobody") == set()


def test_retry_requeues_failed_runs_for_operators_only(
    client, operator, viewer, tiny_checkpoint, starter_suite, django_capture_on_commit_callbacks
):
    audit = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite])
    run = audit.runs.get()
    run.mark_finished(Status.FAILED, error="worker lost")
    client.force_login(viewer)
    assert client.post(f"/audits/{audit.pk}/retry/").status_code == 403
    client.force_login(operator)
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(f"/audits/{audit.pk}/retry/", follow=True)
    run.refresh_from_db()
    audit.refresh_from_db()
    assert run.status == Status.QUEUED and run.error == "" and audit.status == Status.QUEUED
    assert "retry requested by otto-operator" in run.log_tail
    assert len(callbacks) == 1
    assert "Queued 1 run(s) again" in response.content.decode()
    again = client.post(f"/audits/{audit.pk}/retry/", follow=True).content.decode()
    assert "Nothing to retry" in again


def test_aliases_move_and_search_finds_aliases_and_tags(client, operator, family):
    client.force_login(operator)
    client.post("/checkpoints/dash-base/alias/", {"name": "production"})
    client.post("/checkpoints/dash-variant/alias/", {"name": "production"})
    assert Alias.objects.get(name="production").checkpoint.name == "dash-variant"
    bad = client.post("/checkpoints/dash-base/alias/", {"name": "not ok!"}, follow=True)
    assert "Enter a valid “slug”" in bad.content.decode()
    assert Alias.objects.count() == 1  # nothing stored by the refused request

    def listed(query):
        page = client.get(f"/checkpoints/?{query}").content.decode()
        return {n for n in ("dash-base", "dash-variant") if f'data-checkpoint="{n}"' in page}

    assert listed("q=production") == {"dash-variant"}
    assert listed("tag=candidate") == {"dash-variant"}
    assert listed("q=cand") == {"dash-variant"}


def test_registering_with_bad_tags_is_explained(client, operator, tiny_llama_dir):
    client.force_login(operator)
    response = client.post(
        "/checkpoints/register/", {"path": str(tiny_llama_dir), "name": "t2", "tags": "ok, no way"}
    )
    assert "fix &#x27;no way&#x27;" in response.content.decode()
    assert not Checkpoint.objects.filter(name="t2").exists()


def grow_history(runs: dict[str, Run], copies: int) -> None:
    """More checkpoints, each with a finished audit whose scores and item results copy
    the variant's: history that every page must read without more queries."""
    template = runs["dash-variant"]
    scores = list(Score.objects.filter(run=template))
    results = list(ItemResult.objects.filter(run=template))
    for i in range(copies):
        checkpoint = Checkpoint.objects.create(
            name=f"grown-{i}",
            path="/nowhere",
            format="hf",
            fingerprint=f"{i:064x}",
            architecture="LlamaForCausalLM",
            model_type="llama",
            parameter_count=1,
            dtype="f32",
            has_chat_template=True,
            parent=template.checkpoint,
            tags=["grown"],
        )
        audit = Audit.objects.create(
            checkpoint=checkpoint, config={}, config_hash="0" * 64, status=Status.SUCCEEDED
        )
        audit.suites.set(template.audit.suites.all())
        run = Run.objects.create(
            audit=audit,
            kind="evaluate",
            checkpoint=checkpoint,
            status=Status.SUCCEEDED,
            finished_at=template.finished_at,
        )
        for s in scores:
            s.pk, s.run, s.audit, s.checkpoint = None, run, audit, checkpoint
        Score.objects.bulk_create(scores)
        for r in results:
            r.pk, r.run, r.checkpoint = None, run, checkpoint
        ItemResult.objects.bulk_create(results)


def test_pages_make_the_same_number_of_queries_however_much_history(client, viewer, family):
    client.force_login(viewer)
    variant = family["dash-variant"]
    pages = [
        "/checkpoints/",
        "/checkpoints/?q=tiny",
        "/checkpoints/dash-variant/",
        "/audits/",
        f"/audits/{variant.audit_id}/",
        f"/items/?run={variant.pk}&show=flipped",
        "/compare/?a=dash-variant&b=dash-base",
        f"/charts/traits-domains.json?run={variant.pk}",
        f"/charts/conditions-domains.json?run={variant.pk}",
        f"/charts/helpful-domains.json?run={variant.pk}",
        "/charts/checkpoints-domains.json",
        "/charts/checkpoints-families.json",
        "/charts/transfer.json",
    ]

    def counts() -> dict[str, int]:
        found = {}
        for url in pages:
            cache.clear()
            with CaptureQueriesContext(connection) as queries:
                assert client.get(url).status_code == 200, url
            found[url] = len(queries)
        return found

    before = counts()
    grow_history(family, copies=8)
    after = counts()
    assert after == before
    assert Checkpoint.objects.count() == 10 and ItemResult.objects.count() >= 10 * 264


def test_the_transfer_matrix_pairs_each_trained_variant_with_its_base(client, viewer, family):
    """A train-and-evaluate audit's two evaluations give one row: the training domains."""
    base, variant = family["dash-base"], family["dash-variant"]
    audit = Audit.objects.create(
        checkpoint=base.checkpoint, plan="train-and-evaluate", status=Status.SUCCEEDED,
        config={"training": {"domains": ["health", "law"]}}, config_hash="1" * 64,
    )  # fmt: skip
    audit.suites.set(base.audit.suites.all())
    Run.objects.filter(pk__in=[base.pk, variant.pk]).update(audit=audit)
    client.force_login(viewer)
    data = client.get("/charts/transfer.json").json()
    assert data["rows"] == ["health+law"] and data["columns"][0] == "health"
    rows = compare_runs(Run.objects.get(pk=variant.pk), Run.objects.get(pk=base.pk), seed=0)
    wanted = {"suite": "starter", "condition": "neutral", "domain": "science", "trait": "",
              "family": "", "metric": "margin"}  # fmt: skip
    [science] = [r for r in rows if all(r[k] == v for k, v in wanted.items())]
    column = data["columns"].index("science")
    assert data["z"][0][column] == pytest.approx(science["difference"])
    assert data["n"][0][column] == 5
    assert data["links"][0][column] == (
        f"run={variant.pk}&against={base.pk}&domain=science&condition=neutral"
    )
