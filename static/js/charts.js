// Keel's heatmaps: every element with data-chart="URL" gets the chart at URL (JSON from
// audits.charts), a table with the same figures (the chart's text alternative), download
// links, and cells that open the items behind them. Colour scales are colour-blind safe:
// ColorBrewer PuOr, diverging and centred, for margins and changes; a light-to-orange
// sequential scale for rates where lower is better. Cells with too few items are left
// grey and labelled instead of coloured.
"use strict";

window.Keel = window.Keel || {};

(function (Keel) {
  const DIVERGING = [[0, "#b35806"], [0.25, "#f1a340"], [0.5, "#f7f7f7"], [0.75, "#998ec3"], [1, "#542788"]];
  const SEQUENTIAL = [[0, "#fff7ec"], [0.5, "#fdae6b"], [1, "#a63603"]];

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) node.textContent = text;
    return node;
  }
  Keel.el = el;

  const fmt = (x) => (x === null || x === undefined ? "—" : Number(x).toFixed(3));
  const words = (s) => String(s).replaceAll("_", " ");

  function interval(data, i, j) {
    const low = data.ci_low[i][j], high = data.ci_high[i][j];
    if (data.z[i][j] === null) return "";
    if (low === null || high === null) return data.provisional ? "interval when the run finishes" : "interval needs more items";
    return `95% CI ${fmt(low)} to ${fmt(high)}`;
  }

  function cellText(data, i, j) {
    const n = data.n[i][j];
    const where = `${words(data.rows[i])} · ${words(data.columns[j])}`;
    if (!n) return `${where}<br>no items`;
    const few = data.few[i][j] ? `<br><b>too few items</b> (n = ${n}, need ${data.min_items})` : "";
    return `${where}<br>${data.label}: ${fmt(data.z[i][j])}<br>${interval(data, i, j)}<br>n = ${n}${few}` +
      (data.links[i][j] ? "<br>click for the items" : "");
  }

  function draw(container, data) {
    const plot = container.querySelector(".plot");
    plot.replaceChildren();
    if (!data.rows.length) {
      plot.append(el("p", { class: "hint" }, data.empty));
      return;
    }
    // Colour only cells with enough items. Cells with too few are drawn by a second,
    // uniformly grey layer (so they keep their place, axes and hover) and carry their count.
    const x = data.columns.map(words), y = data.rows.map(words);
    const text = data.z.map((row, i) => row.map((_, j) => cellText(data, i, j)));
    const z = data.z.map((row, i) => row.map((v, j) => (data.few[i][j] ? null : v)));
    const values = z.flat().filter((v) => v !== null);
    const trace = {
      type: "heatmap", x, y, z, text, hoverinfo: "text", hoverongaps: false, xgap: 2, ygap: 2,
      colorbar: { title: { text: data.unit }, thickness: 14 }, showscale: values.length > 0,
    };
    if (data.scale === "sequential") {
      Object.assign(trace, { colorscale: SEQUENTIAL, zmin: 0, zmax: 1 });
    } else {
      const spread = Math.max(1e-6, ...values.map((v) => Math.abs(v - data.centre)));
      Object.assign(trace, { colorscale: DIVERGING, zmid: data.centre, zmin: data.centre - spread, zmax: data.centre + spread });
    }
    const fewLayer = {
      type: "heatmap", x, y, text, hoverinfo: "text", hoverongaps: false, xgap: 2, ygap: 2,
      z: data.few.map((row) => row.map((few) => (few ? 0 : null))),
      colorscale: [[0, "#c8c8c8"], [1, "#c8c8c8"]], showscale: false,
    };
    const annotations = [];
    data.few.forEach((row, i) => row.forEach((few, j) => {
      if (few) annotations.push({ x: x[j], y: y[i], text: `n=${data.n[i][j]}`, showarrow: false, font: { size: 10, color: "#333" } });
    }));
    const height = Math.max(220, 60 + 34 * data.rows.length + 90);
    Plotly.newPlot(plot, [fewLayer, trace], {
      margin: { l: 10, r: 10, t: 10, b: 10 }, plot_bgcolor: "#efefef", height, annotations,
      xaxis: { tickangle: -35, automargin: true, title: { text: data.column_title } },
      yaxis: { automargin: true, autorange: "reversed", title: { text: data.row_title } },
      font: { family: "system-ui, sans-serif", size: 12 },
    }, { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d"] });
    plot.on("plotly_click", (event) => {
      const point = event.points[0];
      const link = data.links[point.pointIndex[0]][point.pointIndex[1]];
      if (link) window.location.assign(`/items/?${link}`);
    });
    container.querySelector(".chart-table").replaceChildren(table(data));
  }

  // The chart's text alternative: the same cells as a table, each linking to its items.
  function table(data) {
    const wrap = el("div", { class: "table-wrap" });
    const t = el("table");
    t.append(el("caption", {}, `${data.title}: ${data.label}, 95% interval and items per cell`));
    const head = el("tr");
    head.append(el("th", { scope: "col" }, `${data.row_title} \\ ${data.column_title}`));
    data.columns.forEach((c) => head.append(el("th", { scope: "col" }, words(c))));
    const thead = el("thead"); thead.append(head); t.append(thead);
    const body = el("tbody");
    data.rows.forEach((r, i) => {
      const tr = el("tr");
      tr.append(el("th", { scope: "row" }, words(r)));
      data.columns.forEach((_, j) => {
        const td = el("td");
        if (data.n[i][j]) {
          const text = `${fmt(data.z[i][j])}${data.few[i][j] ? " (too few)" : ""}`;
          const link = data.links[i][j];
          td.append(link ? el("a", { href: `/items/?${link}` }, text) : document.createTextNode(text));
          td.append(el("br"), el("small", {}, `${interval(data, i, j)} n=${data.n[i][j]}`));
        } else {
          td.textContent = "—";
        }
        tr.append(td);
      });
      body.append(tr);
    });
    t.append(body); wrap.append(t);
    return wrap;
  }

  async function load(container) {
    const url = container.dataset.chart;
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    const data = await response.json();
    if (!response.ok) {
      container.querySelector(".plot").replaceChildren(el("p", { class: "error" }, data.error || "This chart could not be loaded."));
      return;
    }
    draw(container, data);
    const links = container.querySelector(".downloads");
    links.replaceChildren(
      el("a", { href: url.replace(".json", ".csv") }, "CSV"), document.createTextNode(" · "),
      el("a", { href: `${url}${url.includes("?") ? "&" : "?"}download=1` }, "JSON"));
  }

  function setUp(container) {
    if (container.dataset.ready) return;
    container.dataset.ready = "1";
    container.append(
      el("div", { class: "plot", role: "img", "aria-label": container.dataset.title || "heatmap; its table follows" }),
      el("p", { class: "downloads hint" }),
    );
    const details = el("details", { class: "chart-data" });
    details.append(el("summary", {}, "Table of this chart"), el("div", { class: "chart-table" }));
    container.append(details);
  }

  Keel.refreshCharts = function (root) {
    (root || document).querySelectorAll("[data-chart]").forEach((container) => {
      setUp(container);
      load(container);
    });
  };

  // A family's indices across versions, with their intervals.
  Keel.drawTrend = function (plot, points) {
    const series = [["benefit", "Benefit index (nats)", "#542788"], ["steering", "Steering resistance (nats)", "#998ec3"],
      ["misalignment", "Misalignment index (share)", "#b35806"]];
    const traces = series.map(([key, name, colour]) => {
      const pts = points.filter((p) => p[key]);
      return {
        type: "scatter", mode: "lines+markers", name, x: pts.map((p) => p.checkpoint), y: pts.map((p) => p[key].value),
        yaxis: key === "misalignment" ? "y2" : "y", line: { color: colour }, marker: { size: 8 },
        error_y: { type: "data", symmetric: false, array: pts.map((p) => (p[key].ci_high === null ? 0 : p[key].ci_high - p[key].value)),
          arrayminus: pts.map((p) => (p[key].ci_low === null ? 0 : p[key].value - p[key].ci_low)), color: colour },
        hovertemplate: `%{x}<br>${name}: %{y:.3f}<extra></extra>`,
      };
    });
    Plotly.newPlot(plot, traces, {
      margin: { l: 10, r: 10, t: 10, b: 10 }, height: 320, legend: { orientation: "h", y: -0.3 },
      xaxis: { automargin: true, type: "category" }, yaxis: { automargin: true, title: { text: "nats" }, zeroline: true },
      yaxis2: { overlaying: "y", side: "right", range: [0, 1], title: { text: "share" }, automargin: true },
      font: { family: "system-ui, sans-serif", size: 12 },
    }, { responsive: true, displaylogo: false });
  };

  Keel.refreshCharts();
})(window.Keel);
