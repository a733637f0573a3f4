"""Keel's Content-Security-Policy in Debian's chromium: every main page loads under it with
no violation and no script error, the heatmaps are drawn (Plotly's data: image included),
and the audit page's websocket connects. A policy too strict for a page fails here, and so
does an inline script or event handler added to a template."""

from __future__ import annotations

import pytest

from audits.builtin import SUITES_DIR
from audits.services import audit_create
from audits.suite_io import parse_jsonl, suite_store
from gpu_tasks.evaluate import run_evaluation
from models_registry.roles import ADMIN
from tests.browser.conftest import PASSWORD, log_in
from tests.conftest import make_user

pytestmark = [pytest.mark.browser]

# Before each page's own scripts: keeps every violation the page reports.
WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}`);
});
"""


@pytest.fixture
def scored_audit(transactional_db, tiny_checkpoint):
    """An audit of the tiny model on eight starter items, scored in this process (no worker),
    committed so the server sees it."""
    lines = (SUITES_DIR / "starter.jsonl").read_text().splitlines()[::8]
    suite = suite_store(name="csp-eight", parsed=parse_jsonl("\n".join(lines), "eight.jsonl"),
                        description="", source="test", license="Apache-2.0")  # fmt: skip
    audit = audit_create(checkpoint=tiny_checkpoint, suites=[suite], conditions=["neutral"],
                         samples=0)  # fmt: skip
    run_evaluation(audit.runs.get().pk)
    return audit


@pytest.fixture
def admin_account(transactional_db) -> tuple[str, str]:
    admin = make_user("csp-ada", ADMIN)  # every role: every page, the audit log, the admin
    admin.set_password(PASSWORD)
    admin.save()
    return admin.username, PASSWORD


def test_every_page_keeps_to_the_policy_and_still_works(
    scored_audit, admin_account, keel_server, browser_page, screenshot
):
    from playwright.sync_api import expect

    page = browser_page
    page.add_init_script(WATCH)
    problems: list[str] = []

    def console(message) -> None:
        # Django's admin pages have no icon link, so the browser asks for /favicon.ico (404).
        if message.location.get("url", "").endswith("/favicon.ico"):
            return
        if message.type == "error" or "Content Security Policy" in message.text:
            problems.append(f"console {message.type}: {message.text} ({message.location})")

    page.on("console", console)
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on(
        "response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None
    )

    def visit(path: str) -> None:
        response = page.goto(f"{keel_server.url}{path}")
        assert response.status == 200, path
        assert response.headers["content-security-policy"].startswith("default-src 'self'")
        page.wait_for_load_state("networkidle", timeout=60_000)  # the charts fetched too
        violations = page.evaluate("window.__csp")
        assert not violations and not problems, (path, violations, problems)

    visit("/login/")
    log_in(page, keel_server.url, *admin_account)

    run = scored_audit.runs.get()
    checkpoint = scored_audit.checkpoint
    page.goto(f"{keel_server.url}/audits/{scored_audit.pk}/")
    # The websocket (connect-src 'self' covers ws: to the same host) and the heatmap, drawn
    # by plotly.js: an SVG, with the cells as a data: PNG inside it (img-src data:).
    expect(page.locator("#live")).to_have_text("live", timeout=30_000)
    heatmap = page.locator(f"#chart-run-{run.pk} .plot").first
    expect(heatmap.locator(".main-svg").first).to_be_visible()
    image = heatmap.locator("image").first
    expect(image).to_be_attached()
    assert (image.get_attribute("href") or image.get_attribute("xlink:href")).startswith(
        "data:image/png"
    )
    screenshot(page, "audit-under-csp")
    assert not page.evaluate("window.__csp") and not problems, (page.evaluate("window.__csp"),
                                                                problems)  # fmt: skip

    visit(f"/checkpoints/{checkpoint.name}/")
    expect(page.get_by_role("heading", name="Report card")).to_be_visible()
    card = page.locator(".chart[data-chart*='traits-domains'] .plot .main-svg").first
    expect(card).to_be_visible()
    for path in (
        "/audits/", "/checkpoints/", f"/items/?run={run.pk}",
        "/compare/", "/suites/", "/suites/csp-eight/",
        "/auditlog/", "/account/token/", "/admin/", "/admin/audits/audit/",
        f"/admin/models_registry/checkpoint/{checkpoint.pk}/change/",
    ):  # fmt: skip
        visit(path)
    expect(page.get_by_role("button", name="Save", exact=True)).to_be_visible()
