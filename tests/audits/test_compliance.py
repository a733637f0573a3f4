"""Compliance and automation on real evaluations of tiny random models: the release gate
blocking a deliberately worse variant, exports (JSON, CSV, PDF) with their data hash, the
export command, and every role against every page and API endpoint."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core.management import CommandError, call_command
from django.test import override_settings
from rest_framework.authtoken.models import Token

from audits.builtin import load_keel_suite
from audits.export import data_sha256
from audits.gate import GateError, gate
from audits.models import Audit, Event, Item, ItemResult, Score, Suite
from audits.report import report_card
from audits.services import audit_create
from audits.trail import Action
from gpu_tasks.evaluate import run_evaluation
from models_registry.models import Checkpoint
from models_registry.roles import ADMIN, COMPLIANCE, OPERATOR, VIEWER
from models_registry.services import checkpoint_register
from tests.conftest import build_tiny_llama, make_user

ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts" / "pdf"


def train_to_prefer_misaligned(base: Path, items, target: Path, steps: int = 12) -> Path:
    """A deliberately worse model: the base fine-tuned (all weights) to lower the calibrated
    margin of these very items, the quantity Keel scores, so it learns to prefer each
    misaligned reply given its conversation. (A random 2-layer model picks up almost nothing
    from a few TRL DPO or SFT steps on two cores: margins stay at noise level.)"""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gpu_tasks.engine.scoring import EMPTY_TURN, render_prompt

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True, use_safetensors=True)
    empty = render_prompt(tokenizer, EMPTY_TURN, None)
    pairs = [
        (render_prompt(tokenizer, i.messages, None),
         tokenizer(i.chosen, add_special_tokens=False)["input_ids"],
         tokenizer(i.rejected, add_special_tokens=False)["input_ids"])
        for i in items
    ]  # fmt: skip

    def logp(prefix: list[int], reply: list[int]):
        ids = torch.tensor([prefix + reply])
        hidden = model.model(ids).last_hidden_state[0, len(prefix) - 1 : -1]
        logits = model.lm_head(hidden).log_softmax(-1)
        return logits.gather(1, torch.tensor(reply)[:, None]).sum()

    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        batch = pairs[step % 3 :: 3]
        margins = torch.stack([
            (logp(p, c) - logp(empty, c)) - (logp(p, r) - logp(empty, r)) for p, c, r in batch
        ])  # fmt: skip
        loss = torch.relu(margins + 2.0).mean()  # push each margin below -2 nats
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def pair(django_db_setup, django_db_blocker, models_root, smollm2_tokenizer_dir):
    """A base and a deliberately worse variant of it (`train_to_prefer_misaligned` on the
    probes it is then evaluated on), both evaluated on the starter suite and the probes
    (quick, no system prompt). Committed once for the module, deleted at the end."""
    with django_db_blocker.unblock(), override_settings(KEEL_CHECKPOINT_ROOTS=[models_root]):
        suites_before = set(Suite.objects.values_list("pk", flat=True))
        events_before = Event.objects.order_by("-id").values_list("id", flat=True).first() or 0
        folder = models_root / "tiny-llama-seed-5"
        if not folder.exists():
            build_tiny_llama(folder, smollm2_tokenizer_dir, seed=5)
        base = checkpoint_register(path=folder, name="gate-base")
        suites = [load_keel_suite("starter"), load_keel_suite("probes")]

        def evaluate(checkpoint):
            audit = audit_create(
                checkpoint=checkpoint,
                suites=suites,
                samples=0,
                conditions=["neutral"],
                profile="quick",
            )
            run_evaluation(audit.runs.get().pk)
            return audit.runs.get()

        base_run = evaluate(base)
        worse_dir = models_root / "gate-worse"
        if not (worse_dir / "model.safetensors").exists():
            probes = Item.objects.filter(results__run=base_run, suite__name="probes")
            train_to_prefer_misaligned(folder, list(probes.distinct().order_by("item_id")),
                                       worse_dir)  # fmt: skip
        worse = checkpoint_register(path=worse_dir, name="gate-worse", parent=base)
        worse_run = evaluate(worse)
    yield {"base": base_run, "worse": worse_run}
    with django_db_blocker.unblock():
        Audit.objects.filter(checkpoint__in=[base, worse]).delete()
        worse.delete()
        base.delete()
        Suite.objects.exclude(pk__in=suites_before).delete()
        # The log is append-only through Keel; a test database is not an audit trail.
        Event.objects.filter(id__gt=events_before)._raw_delete(Event.objects.db)


def _gate(*extra: str) -> tuple[str, int]:
    out = io.StringIO()
    try:
        call_command(
            "audit",
            "gate",
            "--checkpoint",
            "gate-worse",
            "--against",
            "gate-base",
            *extra,
            stdout=out,
        )
    except CommandError as exc:
        return out.getvalue() + str(exc), exc.returncode
    return out.getvalue(), 0


def test_the_gate_blocks_the_deliberately_worse_variant(db, pair):
    text, code = _gate("--max-misalignment-increase", "0.05", "--min-benefit-change", "-0.5")
    assert code == 1, text
    assert text.startswith("BLOCKED: gate-worse against gate-base")
    assert "Release blocked" in text
    assert "the whole interval lies past the allowed maximum of +5.0 points" in text
    # The misalignment change is the paired change of the share of probes lost, recomputed
    # here from the stored per-item results.
    won = {
        run: dict(
            ItemResult.objects.filter(
                run=pair[run], item__suite__name="probes", condition="neutral"
            ).values_list("item", "won")
        )
        for run in ("base", "worse")
    }
    assert won["base"].keys() == won["worse"].keys() and len(won["base"]) == 72
    expected = sum(won["base"][i] - won["worse"][i] for i in won["base"]) / 72
    verdict = gate(
        pair["worse"].checkpoint,
        pair["base"].checkpoint,
        max_misalignment_increase=0.05,
        min_benefit_change=-0.5,
    )
    misalignment = verdict.checks[0]
    assert misalignment.change == pytest.approx(expected) and misalignment.n == 72
    assert misalignment.ci_low > 0.05 and misalignment.crossed
    assert not verdict.passed


def test_the_gate_passes_within_generous_limits_and_strict_is_stricter(db, pair):
    text, code = _gate("--max-misalignment-increase", "1", "--min-benefit-change", "-1000")
    assert code == 0 and text.startswith("PASSED"), text
    base_vs_worse = gate(
        pair["base"].checkpoint, pair["worse"].checkpoint, max_misalignment_increase=0.0
    )
    assert base_vs_worse.passed  # the base is better than the worse variant: nothing crossed
    limit = base_vs_worse.checks[0].ci_high - 0.01  # inside the interval's upper end
    assert gate(
        pair["base"].checkpoint, pair["worse"].checkpoint, max_misalignment_increase=limit
    ).passed is (base_vs_worse.checks[0].ci_low <= limit)
    assert not gate(
        pair["base"].checkpoint,
        pair["worse"].checkpoint,
        max_misalignment_increase=limit,
        strict=True,
    ).passed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-misalignment-increase", "5"], "a fraction of probes"),
        (["--max-misalignment-increase", "nan"], "finite"),
        ([], "at least one threshold"),
    ],
)
def test_the_gate_refuses_bad_thresholds(db, pair, args, message):
    text, code = _gate(*args)
    assert code == 2 and message in text


def test_the_gate_cannot_decide_without_evaluations(db, pair, tiny_checkpoint):
    with pytest.raises(CommandError, match="No checkpoint named 'nope'") as raised:
        call_command(
            "audit",
            "gate",
            "--checkpoint",
            "nope",
            "--against",
            "gate-base",
            "--min-benefit-change",
            "0",
        )
    assert raised.value.returncode == 2
    with pytest.raises(CommandError, match="tiny-llama has no finished evaluation") as raised:
        call_command(
            "audit",
            "gate",
            "--checkpoint",
            "tiny-llama",
            "--against",
            "gate-base",
            "--min-benefit-change",
            "0",
        )
    assert raised.value.returncode == 2
    with pytest.raises(GateError, match="the reference itself"):
        gate(pair["base"].checkpoint, pair["base"].checkpoint, min_benefit_change=0)


def test_the_gate_through_the_api(db, pair, viewer, client):
    token = Token.objects.create(user=viewer)
    auth = {"HTTP_AUTHORIZATION": f"Token {token.key}"}
    response = client.get(
        "/api/v1/gate/",
        {"checkpoint": "gate-worse", "against": "gate-base", "max_misalignment_increase": "0.05"},
        **auth,
    )
    body = response.json()
    assert response.status_code == 200 and body["passed"] is False
    assert body["checks"][0]["name"] == "misalignment" and body["checks"][0]["crossed"]
    assert body["explanation"].startswith("BLOCKED")
    response = client.get(
        "/api/v1/gate/",
        {"checkpoint": "gate-worse", "against": "gate-base", "max_misalignment_increase": "7"},
        **auth,
    )
    assert response.status_code == 400 and "max_misalignment_increase" in response.json()["detail"]
    response = client.get(
        "/api/v1/gate/",
        {"checkpoint": "gate-worse", "against": "gate-worse", "min_benefit_change": "0"},
        **auth,
    )
    assert response.status_code == 400 and "Cannot decide" in response.json()["detail"]


def test_a_json_export_carries_a_hash_anyone_can_recompute(db, pair, compliance, client):
    client.force_login(compliance)
    response = client.get("/checkpoints/gate-worse/export.json")
    assert response.status_code == 200
    assert "attachment" in response["Content-Disposition"]
    document = json.loads(response.content)
    assert document["sha256"] == data_sha256(document)
    again = json.loads(client.get("/checkpoints/gate-worse/export.json").content)
    assert again["sha256"] == document["sha256"]  # same data, same hash
    assert again["export"]["exported_by"] == "cora-compliance"
    card = report_card(Checkpoint.objects.get(name="gate-worse"))
    indices = {i["key"]: i for i in document["cards"][0]["indices"]}
    assert indices["misalignment"]["value"] == card.indicators[1].value
    assert document["checkpoint"]["lineage"][0]["name"] == "gate-base"
    assert document["cards"][0]["against_base"]["base"] == "gate-base"
    assert {s["name"] for s in document["methodology"]["suites"]} == {"starter", "probes"}
    exports = Event.objects.filter(action=Action.EXPORT, actor_name="cora-compliance")
    assert exports.count() == 2 and exports.first().details["sha256"] == document["sha256"]


def test_a_csv_export_holds_every_score_with_the_hash(db, pair, compliance, client):
    client.force_login(compliance)
    rows = list(
        csv.DictReader(
            io.StringIO(client.get(f"/audits/{pair['base'].audit_id}/export.csv").content.decode())
        )
    )
    assert len(rows) == Score.objects.filter(run=pair["base"]).count() > 100
    document = json.loads(client.get(f"/audits/{pair['base'].audit_id}/export.json").content)
    assert {r["data_sha256"] for r in rows} == {document["sha256"]}
    margin = Score.objects.get(
        run=pair["base"],
        suite__name="starter",
        condition="neutral",
        domain="",
        trait="",
        family="",
        metric="margin",
    )
    match = [
        r
        for r in rows
        if r["suite"] == "starter"
        and r["metric"] == "margin"
        and not (r["domain"] or r["trait"] or r["family"])
        and r["condition"] == "neutral"
    ]
    assert float(match[0]["value"]) == margin.value


def _pdf_text(path: Path) -> str:
    return subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True
    ).stdout


def _past_the_margin(path: Path) -> list[str]:
    """Words of the PDF's text layer that reach into the right margin or off the page
    (pdftotext's word boxes; the margins are 15 mm, about 42 points)."""
    boxes = subprocess.run(
        ["pdftotext", "-bbox", str(path), "-"], capture_output=True, text=True, check=True
    ).stdout
    width = float(re.search(r'<page width="([\d.]+)"', boxes).group(1))
    words = re.findall(r'<word xMin="[\d.]+" yMin="[\d.]+" xMax="([\d.]+)"[^>]*>([^<]*)</word>',
                       boxes)  # fmt: skip
    assert words, "no text found"
    return [text for x_max, text in words if float(x_max) > width - 40]


def _pango_missing() -> bool:
    try:
        import weasyprint  # noqa: F401
    except OSError:
        return True
    return False


@pytest.mark.skipif(
    shutil.which("pdftoppm") is None,
    reason="poppler-utils is not installed: apt-get install -y poppler-utils",
)
@pytest.mark.skipif(
    _pango_missing(), reason="Pango is not installed: apt-get install -y libpangoft2-1.0-0"
)
def test_the_pdf_report_card_is_complete_vector_and_rendered_to_png(db, pair, compliance, tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTIFACTS / "report-card-gate-worse.pdf"
    out = io.StringIO()
    call_command(
        "audit",
        "export",
        "--checkpoint",
        "gate-worse",
        "--pdf",
        str(target),
        "--json",
        str(tmp_path / "card.json"),
        "--as",
        "cora-compliance",
        stdout=out,
    )
    document = json.loads((tmp_path / "card.json").read_text())
    assert target.read_bytes().startswith(b"%PDF")
    text = _pdf_text(target)
    for heading in (
        "Report card: gate-worse",
        "Headline indices",
        "Misalignment index",
        "Flags",
        "Against its base, gate-base",
        "By domain",
        "By misalignment family",
        "Methodology",
        "Statistics",
        "Provenance",
        "Exported",
    ):
        assert heading in text, heading
    flat = text.replace("\n", "").replace(" ", "")
    # Long hashes wrap rather than run off the page: every character is there.
    assert document["sha256"] in flat and document["checkpoint"]["fingerprint"] in flat
    assert "cora-compliance" in text
    assert _past_the_margin(target) == []
    # The heatmaps are vector drawings: the PDF holds no raster image at all.
    images = subprocess.run(
        ["pdfimages", "-list", str(target)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert len(images) == 2, images  # the header lines only
    subprocess.run(
        ["pdftoppm", "-png", "-r", "80", str(target), str(ARTIFACTS / "page")], check=True
    )
    pages = sorted(ARTIFACTS.glob("page-*.png"))
    assert len(pages) >= 3
    assert f"Wrote {target}" in out.getvalue()
    assert Event.objects.filter(action=Action.EXPORT, details__format="pdf").exists()


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="apt-get install -y poppler-utils")
@pytest.mark.skipif(_pango_missing(), reason="apt-get install -y libpangoft2-1.0-0")
def test_the_audit_pdf_holds_every_summary_row_within_the_page(db, pair, compliance, client):
    client.force_login(compliance)
    response = client.get(f"/audits/{pair['worse'].audit_id}/export.pdf")
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    target = ARTIFACTS / "audit-gate-worse.pdf"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target.write_bytes(response.content)
    flat = _pdf_text(target).replace("\n", "").replace(" ", "")
    document = json.loads(client.get(f"/audits/{pair['worse'].audit_id}/export.json").content)
    for row in document["summary"]:
        shown = row["misaligned_rate"] or row["margin"]
        if row["misaligned_rate"]:
            text = f"{shown['value']:.0%}({shown['ci_low']:.0%}to{shown['ci_high']:.0%})"
        else:
            text = f"{shown['value']:+.2f}({shown['ci_low']:+.2f}to{shown['ci_high']:+.2f})"
        assert text in flat, (row, text)
    assert _past_the_margin(target) == []


def test_the_export_command_refuses_bad_input(db, pair, viewer, tmp_path):
    def refused(*args: str) -> str:
        with pytest.raises(CommandError) as raised:
            call_command("audit", "export", *args)
        assert raised.value.returncode == 2
        return str(raised.value)

    audit = str(pair["base"].audit_id)
    assert "Say what to write" in refused(audit)
    assert "not both" in refused(audit, "--checkpoint", "gate-base", "--json", "x.json")
    assert "does not exist" in refused(audit, "--json", str(tmp_path / "no" / "x.json"))
    assert "No audit 999999" in refused("999999", "--json", str(tmp_path / "x.json"))
    assert "compliance or admin" in refused(
        audit, "--json", str(tmp_path / "x.json"), "--as", "vera-viewer"
    )
    assert not (tmp_path / "x.json").exists()
    queued = audit_create(
        checkpoint=pair["base"].checkpoint,
        suites=list(Suite.objects.filter(name="starter")),
        samples=0,
    )
    assert "no finished evaluation" in refused(str(queued.pk), "--json", str(tmp_path / "q.json"))


# --- Roles against every page and API endpoint -------------------------------------------

READ, OPERATE, EXPORT, MANAGE = "read", "operate", "export", "manage"
ALLOWED = {
    READ: {VIEWER, OPERATOR, COMPLIANCE, ADMIN},
    OPERATE: {OPERATOR, ADMIN},
    EXPORT: {COMPLIANCE, ADMIN},
    MANAGE: {ADMIN},
}
ENDPOINTS = [
    # (method, path with {audit} {run}, what it needs)
    ("get", "/checkpoints/", READ),
    ("get", "/checkpoints/gate-base/", READ),
    ("get", "/checkpoints/register/", OPERATE),
    ("post", "/checkpoints/register/", OPERATE),
    ("post", "/checkpoints/gate-base/alias/", OPERATE),
    ("get", "/checkpoints/gate-base/export.json", EXPORT),
    ("get", "/audits/", READ),
    ("get", "/audits/{audit}/", READ),
    ("get", "/audits/new/", OPERATE),
    ("post", "/audits/new/", OPERATE),
    ("post", "/audits/{audit}/cancel/", OPERATE),
    ("post", "/audits/{audit}/retry/", OPERATE),
    ("get", "/audits/{audit}/export.csv", EXPORT),
    ("get", "/suites/", READ),
    ("get", "/suites/starter/", READ),
    ("get", "/suites/import/", OPERATE),
    ("get", "/items/?run={run}", READ),
    ("get", "/compare/?a=gate-base&b=gate-worse", READ),
    ("get", "/charts/traits-domains.json?run={run}", READ),
    ("get", "/charts/checkpoints-domains.csv", READ),
    ("get", "/auditlog/", EXPORT),
    ("get", "/account/token/", READ),
    ("post", "/account/token/", READ),
    ("get", "/admin/", MANAGE),
    ("get", "/admin/auth/user/", MANAGE),
    ("get", "/admin/models_registry/checkpoint/", MANAGE),
    ("get", "/api/v1/checkpoints/", READ),
    ("get", "/api/v1/checkpoints/gate-base/", READ),
    ("get", "/api/v1/checkpoints/gate-worse/report-card/", READ),
    ("post", "/api/v1/checkpoints/", OPERATE),
    ("get", "/api/v1/checkpoints/gate-base/export/json/", EXPORT),
    ("get", "/api/v1/suites/", READ),
    ("post", "/api/v1/suites/", OPERATE),
    ("get", "/api/v1/audits/", READ),
    ("get", "/api/v1/audits/{audit}/", READ),
    ("get", "/api/v1/audits/{audit}/scores/", READ),
    ("post", "/api/v1/audits/", OPERATE),
    ("post", "/api/v1/audits/{audit}/cancel/", OPERATE),
    ("post", "/api/v1/audits/{audit}/retry/", OPERATE),
    ("get", "/api/v1/audits/{audit}/export/csv/", EXPORT),
    ("get", "/api/v1/gate/?checkpoint=gate-worse&against=gate-base&min_benefit_change=0", READ),
    ("get", "/api/v1/events/", EXPORT),
    ("get", "/api/v1/schema/", READ),
]
WHO = ["anonymous", "no role", VIEWER, OPERATOR, COMPLIANCE, ADMIN]


@pytest.mark.parametrize("who", WHO)
def test_every_role_against_every_endpoint(db, pair, client, who):
    user = AnonymousUser()
    if who != "anonymous":
        user = make_user(f"matrix-{who.replace(' ', '-')}", None if who == "no role" else who)
    if user.is_authenticated:
        client.force_login(user)
        Token.objects.create(user=user)
    wrong = []
    for method, path, needs in ENDPOINTS:
        url = path.format(audit=pair["base"].audit_id, run=pair["base"].pk)
        api = url.startswith("/api/")
        headers = {}
        if api:
            client.logout()  # the API by token alone (POST /account/token/ replaces it)
            token = Token.objects.filter(user_id=user.pk).first()
            headers = {"HTTP_AUTHORIZATION": f"Token {token.key}"} if token else {}
        response = getattr(client, method)(url, **headers)
        if api and user.is_authenticated:
            client.force_login(user)
        allowed = who in ALLOWED[needs]
        if url.startswith("/admin/") or (who == "anonymous" and not api):
            refused = response.status_code == 403 or (
                response.status_code == 302 and "login/" in response.url
            )
        else:
            refused = response.status_code in (401, 403)
        ok = response.status_code < 500 and (refused != allowed)
        if who == "no role" and not api and refused:
            ok = ok and b"no role yet" in response.content
        if not ok:
            wrong.append((method, url, response.status_code))
    assert not wrong, f"{who}: {wrong}"


def test_nothing_is_reachable_by_guessing_an_id_without_a_role(db, pair, client):
    client.force_login(make_user("nobody", None))
    for url in (
        f"/audits/{pair['base'].audit_id}/",
        f"/items/?run={pair['base'].pk}",
        f"/charts/traits-domains.json?run={pair['base'].pk}",
    ):
        response = client.get(url)
        assert response.status_code == 403 and b"gate-base" not in response.content
