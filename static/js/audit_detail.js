// Audit page: live progress over a websocket; heatmaps (charts.js) per evaluate run.
"use strict";

(function () {
  const urls = document.getElementById("urls").dataset;
  const runsEl = document.getElementById("runs");
  const statusEl = document.getElementById("audit-status");
  const liveEl = document.getElementById("live");
  const chartsEl = document.getElementById("charts");
  const FINISHED = ["succeeded", "failed", "cancelled"];
  let lastStatus = null;
  let lastProgress = null;
  let retryMs = 1000;

  const el = Keel.el;

  function renderRuns(snapshot) {
    runsEl.replaceChildren();
    snapshot.runs.forEach((run) => {
      const box = el("div", { class: "run card", "data-run": run.run });
      const head = el("div", { class: "run-head" });
      head.append(
        el("strong", {}, `${run.kind} · ${run.checkpoint}`),
        el("span", { class: `status ${run.status}` }, run.status),
        el("span", { class: "hint" }, [run.stage, run.device].filter(Boolean).join(" · "))
      );
      const bar = el("div", { class: "bar", role: "progressbar", "aria-valuemin": "0",
        "aria-valuemax": "100", "aria-valuenow": String(run.percent) });
      const fill = el("div", { class: "fill" });
      fill.style.width = `${run.percent}%`;
      bar.append(fill);
      const count = el("span", { class: "count" },
        run.total ? `${run.done} / ${run.total} ${run.kind === "train" ? "training steps" : "items scored or replies sampled"} (${run.percent}%)` : "waiting for a worker");
      box.append(head, bar, count);
      if (run.error) box.append(el("p", { class: "error" }, run.error));
      if (run.kind === "evaluate" && run.status === "succeeded") {
        const card = el("p");
        card.append(el("a", { href: `/checkpoints/${encodeURIComponent(run.checkpoint)}/#report-card`, class: "report-link" },
          `Report card of ${run.checkpoint} →`));
        box.append(card);
      }
      if (run.log_tail) {
        const details = el("details");
        details.append(el("summary", {}, "Log"), el("pre", { class: "log" }, run.log_tail));
        box.append(details);
      }
      runsEl.append(box);
    });
  }

  function apply(snapshot) {
    renderRuns(snapshot);
    statusEl.textContent = snapshot.status;
    statusEl.className = `status ${snapshot.status}`;
    const cancel = document.getElementById("cancel-form");
    if (cancel) cancel.hidden = FINISHED.includes(snapshot.status);
    const retry = document.getElementById("retry-form");
    if (retry) retry.hidden = !["failed", "cancelled"].includes(snapshot.status);
    ensureCharts(snapshot);
    if (lastStatus !== null && !FINISHED.includes(lastStatus) && FINISHED.includes(snapshot.status)) {
      // Finished while open: final scores with intervals now, and the tables on reload.
      Keel.refreshCharts(chartsEl);
      document.getElementById("finished-note").hidden = false;
    }
    const progressKey = JSON.stringify([snapshot.scores, snapshot.runs.map((r) => [r.done, r.status])]);
    if (lastProgress !== null && progressKey !== lastProgress) redrawSoon();
    lastProgress = progressKey;
    lastStatus = snapshot.status;
  }

  // One heatmap block per evaluate run, added as runs appear (a variant's run is created
  // when its training finishes). Cells fill in while a run scores (provisional means),
  // redrawn at most every few seconds; final scores with intervals replace them.
  function ensureCharts(snapshot) {
    snapshot.runs.filter((run) => run.kind === "evaluate").forEach((run) => {
      if (document.getElementById(`chart-run-${run.run}`)) return;
      const block = el("section", { class: "run-charts" });
      block.append(el("h3", {}, `${run.checkpoint}: benefit by trait and domain (no system prompt)`));
      const select = el("select", { "aria-label": "Metric" });
      JSON.parse(document.getElementById("metrics").textContent).forEach(([value, label]) => {
        select.append(el("option", { value }, label));
      });
      const traits = el("div", { id: `chart-run-${run.run}`, class: "chart",
        "data-chart": `/charts/traits-domains.json?run=${run.run}&metric=margin`,
        "data-title": `${run.checkpoint}: benefit by trait and domain` });
      select.addEventListener("change", () => {
        traits.dataset.chart = `/charts/traits-domains.json?run=${run.run}&metric=${select.value}`;
        Keel.refreshCharts(traits.parentElement);
      });
      const label = el("label", { class: "inline" }, "Metric ");
      label.append(select);
      const conditions = el("div", { class: "chart", "data-chart": `/charts/conditions-domains.json?run=${run.run}`,
        "data-title": `${run.checkpoint}: change under each condition against no system prompt` });
      block.append(label, traits, el("h3", {}, `${run.checkpoint}: change under each persona against no system prompt, by domain`), conditions);
      document.getElementById("charts-empty")?.remove();
      chartsEl.append(block);
      Keel.refreshCharts(block);
    });
  }

  let lastDrawn = 0;
  let pending = null;
  function redrawSoon() {
    const wait = Math.max(0, lastDrawn + 3000 - Date.now());
    if (pending) return;
    pending = setTimeout(() => { pending = null; lastDrawn = Date.now(); Keel.refreshCharts(chartsEl); }, wait);
  }

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${window.location.host}${urls.ws}`);
    socket.onopen = () => { liveEl.textContent = "live"; liveEl.className = "live on"; retryMs = 1000; };
    socket.onmessage = (event) => apply(JSON.parse(event.data));
    socket.onclose = (event) => {
      if (event.code === 4403) { liveEl.textContent = "not allowed"; return; }
      if (FINISHED.includes(lastStatus)) { liveEl.textContent = "finished"; liveEl.className = "live"; return; }
      liveEl.textContent = "reconnecting…"; liveEl.className = "live off";
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 15000);
    };
  }

  apply(JSON.parse(document.getElementById("snapshot").textContent));
  connect();
})();
