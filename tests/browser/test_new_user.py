"""A new operator's first audit, in Debian's chromium against a running Keel and worker.

Log in, find the checkpoint, queue an audit from the form, and watch it finish live on the
audit page: the websocket indicator, the progress bar and the status change without a
reload, and the run's heatmap is drawn. Screenshots of every step are kept under
test-artifacts/screenshots/.
"""

from __future__ import annotations

import re

import pytest

from audits.models import DOMAINS, TRAITS, Audit
from audits.services import audit_create
from config.celery import app as celery_app
from gpu_tasks.progress import report
from models_registry.services import checkpoint_register
from tests.browser.conftest import fill_login_form, low_contrast, off_the_loop
from tests.conftest import MODELS_ROOT, build_tiny_llama
from tests.integration.test_worker import wait_until_finished

pytestmark = [pytest.mark.integration, pytest.mark.browser]

# Installed before each page's own scripts: notes every value the progress bar, the status
# badge and the live indicator take, so the test sees changes that come and go between
# its polls, and whether the page was ever reloaded (a reload starts a new record).
RECORDER = """
(() => {
  const seen = { progress: [], status: [], live: [], loadedAt: Date.now() };
  window.__keelSeen = seen;
  const note = (list, value) => {
    if (value !== null && value !== undefined && list[list.length - 1] !== value) list.push(value);
  };
  const record = () => {
    const bar = document.querySelector("#runs [role=progressbar]");
    note(seen.progress, bar && bar.getAttribute("aria-valuenow"));
    const status = document.getElementById("audit-status");
    note(seen.status, status && status.textContent.trim());
    const live = document.getElementById("live");
    note(seen.live, live && live.textContent.trim());
  };
  document.addEventListener("DOMContentLoaded", () => {
    record();
    new MutationObserver(record).observe(document.body, {
      subtree: true, childList: true, characterData: true, attributes: true,
    });
  });
})();
"""


def second_checkpoint(base):
    """Another tiny model, registered as a variant of base."""
    folder = MODELS_ROOT / "tiny-llama-seed-1"
    if not (folder / "model.safetensors").exists():
        build_tiny_llama(folder, MODELS_ROOT / "smollm2-tokenizer", seed=1)
    return checkpoint_register(path=folder, name="tiny-llama-other", parent=base)


def test_a_new_operator_queues_an_audit_and_watches_it_finish(
    celery_worker_process,  # first: the worker starts before the browser fixtures
    live_server_url,
    operator_account,
    tiny_checkpoint,
    starter_suite,
    browser_page,
    narrow_page,
    screenshot,
):
    from playwright.sync_api import expect

    page = browser_page
    page.add_init_script(RECORDER)

    # Every page needs a login: the checkpoint list sends a new user to the form first.
    page.goto(f"{live_server_url}/checkpoints/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/checkpoints/$"))
    expect(page.get_by_role("heading", name="Log in to Keel")).to_be_visible()
    screenshot(page, "01-login")
    fill_login_form(page, *operator_account)
    expect(page).to_have_url(f"{live_server_url}/checkpoints/")
    link = page.get_by_role("link", name=tiny_checkpoint.name, exact=True)
    expect(link).to_be_visible()
    screenshot(page, "02-checkpoints")

    link.click()
    expect(page).to_have_url(f"{live_server_url}/checkpoints/{tiny_checkpoint.name}/")
    expect(page.get_by_role("heading", level=1)).to_have_text(tiny_checkpoint.name)
    screenshot(page, "03-checkpoint")

    page.get_by_role("link", name="Audit this checkpoint").click()
    expect(page.get_by_role("heading", name="New audit")).to_be_visible()
    expect(page.locator("#id_checkpoint")).to_have_value(tiny_checkpoint.name)
    screenshot(page, "04-new-audit")

    # Keep it small: the starter suite, the neutral condition only, profile quick.
    suites = page.locator("input[name=suites]")
    for i in range(suites.count()):
        box = suites.nth(i)
        box.set_checked(box.get_attribute("value") == str(starter_suite.pk))
    conditions = page.locator("input[name=conditions]")
    for i in range(conditions.count()):
        box = conditions.nth(i)
        box.set_checked(box.get_attribute("value") == "neutral")
    page.select_option("#id_profile", "quick")
    page.fill("#id_samples", "1")
    screenshot(page, "05-new-audit-filled")
    page.get_by_role("button", name="Queue audit").click()

    expect(page).to_have_url(re.compile(r"/audits/\d+/$"))
    audit = Audit.objects.get()
    assert page.url == f"{live_server_url}/audits/{audit.pk}/"
    # The audit is what was chosen in the form.
    assert audit.checkpoint == tiny_checkpoint
    assert list(audit.suites.all()) == [starter_suite]
    chosen = (audit.conditions, audit.profile, audit.config["generation"]["samples"])
    assert chosen == (["neutral"], "quick", 1)
    assert audit.created_by.username == operator_account[0]
    expect(page.locator(".message:not([hidden])")).to_have_text(f"Queued audit {audit.pk}.")
    loaded_at = page.evaluate("window.__keelSeen.loadedAt")

    expect(page.locator("#live")).to_have_text("live")
    screenshot(page, "06-audit-live")

    status = page.locator("#audit-status")
    expect(status).to_have_text("succeeded", timeout=180_000)
    # The run's trait × domain heatmap (Plotly), redrawn as scores arrive: wait for the
    # draw that has every trait.
    heatmap = f"#chart-run-{audit.runs.get().pk} .plot"
    expect(page.locator(f"{heatmap} .main-svg").first).to_be_visible()
    page.wait_for_function(
        "([selector, rows]) => document.querySelector(selector)?.data?.[0]?.y?.length === rows",
        arg=[heatmap, len(TRAITS)],
    )
    screenshot(page, "07-audit-succeeded")

    seen = page.evaluate("window.__keelSeen")
    assert seen["loadedAt"] == loaded_at, "the audit page was reloaded"
    # It was open before the audit finished, and followed it to the end over the websocket.
    assert seen["status"][0] in ("queued", "running"), seen
    assert seen["status"][-1] == "succeeded", seen
    assert seen["live"][-1] == "live", seen
    progress = [int(v) for v in seen["progress"]]
    assert len(set(progress)) >= 2, seen
    assert progress == sorted(progress), seen
    assert progress[-1] == 100, seen
    expect(page.locator("#runs .count")).to_contain_text("(100%)")

    trace = page.locator(heatmap).evaluate(
        "plot => { const t = plot.data[0]; return {type: t.type, x: t.x, y: t.y, z: t.z}; }"
    )
    assert trace["type"] == "heatmap"
    assert sorted(trace["y"]) == sorted(t.replace("_", " ") for t in TRAITS)
    assert sorted(trace["x"]) == sorted(d.replace("_", " ") for d in DOMAINS)
    assert [len(row) for row in trace["z"]] == [len(DOMAINS)] * len(TRAITS)

    # The report card, one click from the finished run.
    page.get_by_role("link", name=f"Report card of {tiny_checkpoint.name} →").click()
    expect(page).to_have_url(re.compile(rf"/checkpoints/{tiny_checkpoint.name}/#report-card$"))
    expect(page.get_by_role("heading", name="Report card")).to_be_visible()
    benefit = page.locator("[data-index=benefit] .value")
    expect(benefit).to_contain_text("nats")
    cells = page.locator(".chart[data-chart*='traits-domains'] .plot")
    expect(cells.locator(".main-svg").first).to_be_visible()
    screenshot(page, "09-report-card")

    assert low_contrast(page) == []

    # Without a mouse: Tab reaches a chart's table (its text alternative), Enter opens it,
    # and the next Tab reaches the first cell's link to its items.
    summary = "document.activeElement.matches('.chart-data summary')"
    for _ in range(120):
        page.keyboard.press("Tab")
        if page.evaluate(summary):
            break
    assert page.evaluate(summary), "Tab never reached a chart's table"
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.getAttribute('href')")
    assert focused and focused.startswith("/items/?run="), focused

    # A click on a heatmap cell (humility x law) opens the items behind it.
    trait, domain = TRAITS.index("humility"), DOMAINS.index("law")
    point = cells.evaluate(
        """(plot, [row, column]) => {
            const xa = plot._fullLayout.xaxis, ya = plot._fullLayout.yaxis;
            const box = plot.getBoundingClientRect();
            return {x: box.left + xa._offset + xa.l2p(column),
                    y: box.top + ya._offset + ya.l2p(row)};
        }""",
        [trait, domain],
    )
    page.mouse.click(point["x"], point["y"])
    expect(page).to_have_url(re.compile(r"/items/\?run=\d+&suite=\d+&trait=humility&domain=law"))
    expect(page.get_by_text("1 result", exact=True)).to_be_visible()
    expect(page.locator("article.item")).to_contain_text("law-humility")
    screenshot(page, "10-items-of-a-cell")
    assert low_contrast(page) == []

    # Compare with a second checkpoint, evaluated on the same items by the same worker.
    other = second_checkpoint(tiny_checkpoint)
    second = audit_create(checkpoint=other, suites=[starter_suite], conditions=["neutral"],
                          profile="quick", samples=0)  # fmt: skip
    assert wait_until_finished(second, celery_worker_process).status == "succeeded"
    page.get_by_role("link", name="Compare", exact=True).click()
    page.select_option("select[name=a]", other.name)
    page.select_option("select[name=b]", tiny_checkpoint.name)
    page.get_by_role("button", name="Compare").click()
    expect(page.get_by_role("heading", name="Overall")).to_be_visible()
    expect(page.locator("table").first).to_contain_text(f"{other.name} − {tiny_checkpoint.name}")
    screenshot(page, "11-compare")
    flipped = page.get_by_role("link", name="see the items that flipped")
    flipped.click()
    expect(page.get_by_role("link", name=f"Flipped against {tiny_checkpoint.name}")).to_be_visible()
    screenshot(page, "12-items-that-flipped")

    # The audit page on a phone-sized screen, once it has finished.
    narrow = narrow_page(page)
    narrow.goto(f"{live_server_url}/audits/{audit.pk}/")
    expect(narrow.locator("#audit-status")).to_have_text("succeeded")
    expect(narrow.locator(f"{heatmap} .main-svg").first).to_be_visible()
    screenshot(narrow, "08-audit-succeeded-420px")
    width = narrow.evaluate("document.documentElement.scrollWidth")
    assert width <= 420, f"the page is {width} px wide on a 420 px screen"


def test_the_live_indicator_reconnects_when_the_server_restarts(
    keel_server, tiny_checkpoint, starter_suite, logged_in_page, screenshot
):
    from playwright.sync_api import expect

    # No worker runs here: the test moves the run itself with the worker's own progress
    # calls, so the audit stays unfinished for as long as the check needs.
    audit = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite], conditions=["neutral"])
    run = audit.runs.get()
    try:
        page = logged_in_page
        page.add_init_script(RECORDER)
        page.goto(f"{keel_server.url}/audits/{audit.pk}/")
        live = page.locator("#live")
        bar = page.locator("#runs [role=progressbar]")
        expect(live).to_have_text("live")
        expect(page.locator("#audit-status")).to_have_text("queued")
        screenshot(page, "01-live")

        keel_server.stop()
        expect(live).to_have_text("reconnecting…")
        expect(live).to_have_class(re.compile(r"\boff\b"))
        # Progress made while the server is down reaches the page once it reconnects.
        run.mark_started("cpu")
        off_the_loop(report, run, stage="scoring", done=12, total=60)
        screenshot(page, "02-reconnecting")

        keel_server.start()
        # The page retries with a growing pause, at most 15 s, so it is back within that.
        expect(live).to_have_text("live", timeout=20_000)
        expect(bar).to_have_attribute("aria-valuenow", "20")
        expect(page.locator("#audit-status")).to_have_text("running")
        # And the new connection carries the updates that follow.
        off_the_loop(report, run, done=45)
        expect(bar).to_have_attribute("aria-valuenow", "75")
        screenshot(page, "03-live-again")

        seen = page.evaluate("window.__keelSeen")
        assert seen["live"] == ["connecting…", "live", "reconnecting…", "live"], seen
    finally:
        celery_app.control.purge()  # the audit's queued task: no worker will take it
