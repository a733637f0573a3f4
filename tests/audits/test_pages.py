"""Pages: login everywhere, who may queue, what the audit page and its JSON show."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from audits.models import TRAITS, Audit, Status
from gpu_tasks.evaluate import run_evaluation


@pytest.mark.parametrize(
    "url",
    [
        "/",
        "/checkpoints/",
        "/checkpoints/register/",
        "/audits/",
        "/audits/new/",
        "/audits/1/",
        "/charts/traits-domains.json?run=1",
        "/items/?run=1",
        "/compare/",
        "/checkpoints/anything/",
    ],  # fmt: skip
)
def test_every_page_needs_a_login(client, db, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response.url.startswith("/login/?next=")


def test_the_login_page_and_static_files_are_public(client, db):
    assert client.get("/login/").status_code == 200


def test_a_viewer_reads_but_cannot_queue(client, viewer, tiny_checkpoint, starter_suite):
    client.force_login(viewer)
    assert client.get("/checkpoints/").status_code == 200
    assert "tiny-llama" in client.get("/checkpoints/").content.decode()
    assert client.get("/audits/new/").status_code == 403
    response = client.post(
        "/audits/new/",
        {"checkpoint": "tiny-llama", "suites": [starter_suite.pk], "profile": "quick", "seed": 0},
    )
    assert response.status_code == 403
    assert not Audit.objects.exists()


def test_an_operator_queues_an_audit(
    client, operator, tiny_checkpoint, starter_suite, django_capture_on_commit_callbacks
):
    client.force_login(operator)
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(
            "/audits/new/",
            {
                "checkpoint": "tiny-llama",
                "suites": [starter_suite.pk],
                "profile": "quick",
                "seed": 3,
                "conditions": ["neutral", "flattery"],
            },  # fmt: skip
        )
    audit = Audit.objects.get()
    assert response.status_code == 302
    assert response.url == f"/audits/{audit.pk}/"
    assert audit.created_by == operator
    assert audit.seed == 3
    assert audit.conditions == ["neutral", "flattery"]
    assert audit.config["conditions"] == ["flattery", "neutral"]
    assert audit.runs.get().status == Status.QUEUED
    assert audit.config["generation"]["samples"] == 1  # the default when the form omits it
    assert len(callbacks) == 1


def test_the_audit_form_explains_bad_input(client, operator, tiny_checkpoint, starter_suite):
    client.force_login(operator)
    response = client.post(
        "/audits/new/", {"checkpoint": "no-such-model", "suites": [], "profile": "fast", "seed": -1}
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert "Select a valid choice. That choice is not one of the available choices." in page
    assert "This field is required." in page
    assert "Ensure this value is greater than or equal to 0." in page
    assert not Audit.objects.exists()


@pytest.fixture
def finished_audit(tiny_checkpoint, starter_suite, operator):
    from audits.services import audit_create

    audit = audit_create(
        checkpoint=tiny_checkpoint, suites=[starter_suite], conditions=["neutral"], user=operator
    )
    run_evaluation(audit.runs.get().pk)
    return audit


def test_the_audit_page_embeds_its_progress_and_loads_plotly_locally(client, viewer,
                                                                     finished_audit):  # fmt: skip
    client.force_login(viewer)
    page = client.get(f"/audits/{finished_audit.pk}/").content.decode()
    assert '<script id="snapshot" type="application/json">' in page
    assert '"status": "succeeded"' in page
    assert "/static/vendor/plotly/plotly.min.js" in page
    # Every script comes from Keel's own static files, none from another host.
    sources = re.findall(r'<script[^>]* src="([^"]+)"', page)
    assert sources and all(src.startswith("/static/") for src in sources)
    assert client.get("/static/vendor/plotly/plotly.min.js").status_code == 200
    assert finished_audit.config_hash in page


def test_the_heatmap_json_has_a_cell_per_domain_and_trait(client, viewer, finished_audit):
    client.force_login(viewer)
    run = finished_audit.runs.get()
    data = client.get(f"/charts/traits-domains.json?run={run.pk}&metric=accuracy").json()
    assert data["rows"] == list(TRAITS) and len(data["columns"]) == 12
    assert all(v in (0.0, 1.0) for row in data["z"] for v in row)  # one item per cell
    assert all(n == 1 for row in data["n"] for n in row)
    assert data["ci_low"][0][0] is not None  # Wilson is defined even for one item
    # One item is too few to colour a cell: every cell is marked, none left out.
    assert data["min_items"] == 3 and all(all(row) for row in data["few"])
    assert data["links"][0][0].startswith(f"run={run.pk}&suite=")


def test_the_heatmap_json_refuses_an_unknown_metric(client, viewer, finished_audit):
    client.force_login(viewer)
    run = finished_audit.runs.get()
    response = client.get(f"/charts/traits-domains.json?run={run.pk}&metric=vibes")
    assert response.status_code == 400
    assert "unknown metric 'vibes'" in response.json()["error"]


def test_an_unknown_audit_is_404(client, viewer):
    client.force_login(viewer)
    assert client.get("/audits/999/").status_code == 404


def test_cancel_marks_unfinished_runs(client, operator, tiny_checkpoint, starter_suite):
    from audits.services import audit_create

    audit = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite])
    client.force_login(operator)
    response = client.post(reverse("audits:cancel", args=[audit.pk]))
    assert response.status_code == 302
    assert audit.runs.get().cancel_requested is True


def test_a_viewer_cannot_cancel(client, viewer, tiny_checkpoint, starter_suite):
    from audits.services import audit_create

    audit = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite])
    client.force_login(viewer)
    assert client.post(reverse("audits:cancel", args=[audit.pk])).status_code == 403
    assert audit.runs.get().cancel_requested is False


def test_the_suites_pages_show_source_licence_and_items(client, viewer, starter_suite):
    client.force_login(viewer)
    page = client.get("/suites/").content.decode()
    assert "starter" in page and "Apache-2.0" in page and starter_suite.content_hash[:12] in page
    assert "sales_pressure" in page  # the steering conditions are listed
    detail = client.get("/suites/starter/?domain=health").content.decode()
    assert "health-humility-eval-01" in detail
    assert "law-humility-eval-01" not in detail
    assert client.get("/suites/no-such-suite/").status_code == 404
    assert client.get("/suites/starter/?version=99").status_code == 404


def test_the_audit_page_summarises_each_suite_with_intervals(client, viewer, finished_audit):
    client.force_login(viewer)
    page = client.get(f"/audits/{finished_audit.pk}/").content.decode()
    assert "By suite and misalignment family" in page
    overall = finished_audit.scores.get(domain="", trait="", family="", metric="accuracy")
    assert f"{overall.value:.3f} ({overall.ci_low:.3f} to {overall.ci_high:.3f})" in page


def test_the_audit_form_explains_a_bad_sample_count_and_queues_nothing(client, operator,
                                                                      tiny_checkpoint,
                                                                      starter_suite):  # fmt: skip
    client.force_login(operator)
    response = client.post("/audits/new/", {
        "checkpoint": "tiny-llama", "suites": [starter_suite.pk], "profile": "quick",
        "seed": 0, "samples": 99, "judge": "no-such-model",
    })  # fmt: skip
    assert response.status_code == 200
    page = response.content.decode()
    assert "Ensure this value is less than or equal to 16." in page
    assert "Select a valid choice" in page
    assert not Audit.objects.exists()


def test_an_operator_queues_a_training_audit_and_bad_choices_are_explained(
    client, operator, tiny_checkpoint, starter_suite, django_capture_on_commit_callbacks
):
    from audits.builtin import load_keel_suite

    beneficial = load_keel_suite("beneficial")
    client.force_login(operator)
    form = {"checkpoint": "tiny-llama", "profile": "quick", "seed": 0, "conditions": ["neutral"],
            "plan": "train-and-evaluate", "method": "dpo"}  # fmt: skip
    page = client.post("/audits/new/", {**form, "suites": [beneficial.pk]})
    assert page.status_code == 200
    assert "Choose at least one domain to train on." in page.content.decode()
    page = client.post("/audits/new/", {**form, "suites": [starter_suite.pk],
                                        "train_domains": ["health"]})  # fmt: skip
    assert page.status_code == 200
    assert "have no train items for those traits and domains" in page.content.decode()
    assert not Audit.objects.exists()

    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post("/audits/new/", {**form, "suites": [beneficial.pk],
                                                "train_domains": ["health", "law"]})  # fmt: skip
    audit = Audit.objects.get()
    assert response.status_code == 302
    assert audit.plan == "train-and-evaluate"
    assert audit.config["training"]["domains"] == ["health", "law"]
    assert audit.config["training"]["traits"] == sorted(TRAITS)  # all, when none are ticked
    assert [r.kind for r in audit.runs.order_by("pk")] == ["train", "evaluate"]
    assert len(callbacks) == 2
