// Audit page: live progress over a websocket, then the domains x traits heatmap.
"use strict";

(function () {
  const urls = document.getElementById("urls").dataset;
  const runsEl = document.getElementById("runs");
  const statusEl = document.getElementById("audit-status");
  const liveEl = document.getElementById("live");
  const metricEl = document.getElementById("metric");
  const FINISHED = ["succeeded", "failed", "cancelled"];
  let lastStatus = null;
  let lastScores = -1;
  let retryMs = 1000;

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

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
    if (cancel && FINISHED.includes(snapshot.status)) cancel.hidden = true;
    if (snapshot.scores !== lastScores && snapshot.scores > 0) drawHeatmap();
    lastScores = snapshot.scores;
    lastStatus = snapshot.status;
  }

  function fmt(x) {
    return x === null || x === undefined ? "—" : Number(x).toFixed(3);
  }

  async function drawHeatmap() {
    const response = await fetch(`${urls.heatmap}?metric=${encodeURIComponent(metricEl.value)}`);
    if (!response.ok) return;
    const data = await response.json();
    const hover = data.z.map((row, i) => row.map((v, j) => {
      const n = data.n[i][j];
      if (!n) return `${data.traits[i]} · ${data.domains[j]}<br>no items`;
      const ci = data.ci_low[i][j] === null ? "interval needs ≥ 2 items"
        : `95% CI ${fmt(data.ci_low[i][j])} to ${fmt(data.ci_high[i][j])}`;
      return `${data.traits[i]} · ${data.domains[j]}<br>${data.label}: ${fmt(v)}<br>${ci}<br>n = ${n}`;
    }));
    const values = data.z.flat().filter((v) => v !== null);
    const spread = Math.max(1e-6, ...values.map((v) => Math.abs(v - data.centre)));
    const container = document.getElementById("heatmap");
    container.replaceChildren();
    // Purple-orange diverging scale (ColorBrewer PuOr), safe for colour-blind readers.
    Plotly.newPlot(container, [{
      type: "heatmap", x: data.domains.map((d) => d.replace("_", " ")),
      y: data.traits.map((t) => t.replaceAll("_", " ")), z: data.z,
      text: hover, hoverinfo: "text", hoverongaps: false,
      zmid: data.centre, zmin: data.centre - spread, zmax: data.centre + spread,
      colorscale: [[0, "#b35806"], [0.25, "#f1a340"], [0.5, "#f7f7f7"], [0.75, "#998ec3"], [1, "#542788"]],
      colorbar: { title: { text: data.metric === "accuracy" ? "share won" : "nats" } },
      xgap: 2, ygap: 2,
    }], {
      margin: { l: 170, r: 20, t: 10, b: 110 }, plot_bgcolor: "#d9d9d9",
      xaxis: { tickangle: -35 }, yaxis: { automargin: true }, height: 380,
    }, { responsive: true, displaylogo: false });
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

  metricEl.addEventListener("change", drawHeatmap);
  apply(JSON.parse(document.getElementById("snapshot").textContent));
  connect();
})();
