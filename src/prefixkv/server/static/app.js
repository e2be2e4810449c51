// The prefixkv dashboard: polls /v1/dashboard every second and draws its points as SVG.
// No library, no external fetch (the page's Content-Security-Policy forbids it).
"use strict";

const COLORS = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#c53030", "#d69e2e", "#718096"];
const CHARTS = {
  hit_rate: { series: [["hit rate", "hit_rate"]], max: 1 },
  tokens: { series: [["looked up", "query_tokens_per_s"], ["cached", "hit_tokens_per_s"]] },
  pool: { series: [["used", "used_blocks"], ["reserved", "reserved_blocks"], ["free", "free_blocks"]] },
  batch: { series: [["running", "running"], ["waiting", "waiting"], ["batch size", "batch_size"]] },
  decode: { series: [["decode tokens/s", "decode_tokens_per_s"]] },
  ttft: { series: [["p50", "ttft_p50"], ["p99", "ttft_p99"]] },
  misses: {
    series: ["cold", "evicted", "diverged", "partial_block", "other_namespace", "lower_tier",
      "disabled"].map((reason) => [reason.replace("_", " "), `miss_${reason}_per_s`]),
  },
};
const KEEP = 600; // points: ten minutes at one a second
let points = [];
let last = 0;

function key() { return sessionStorage.getItem("prefixkv-key") || ""; }

function takeKeyFromFragment() {
  const match = location.hash.match(/key=([^&]+)/);
  if (match) {
    sessionStorage.setItem("prefixkv-key", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname); // out of the address bar and history
  }
}

async function poll() {
  const headers = key() ? { Authorization: "Bearer " + key() } : {};
  let response;
  try {
    response = await fetch("/v1/dashboard?since=" + last, { headers, cache: "no-store" });
  } catch (err) {
    setStatus("server unreachable");
    return;
  }
  if (response.status === 401) {
    document.getElementById("login").hidden = false;
    setStatus("needs an API key");
    return;
  }
  if (!response.ok) { setStatus("error " + response.status); return; }
  const data = await response.json();
  document.getElementById("login").hidden = true;
  points = points.concat(data.points).slice(-KEEP);
  if (points.length) last = points[points.length - 1].t;
  render(data);
  setStatus("updated " + new Date().toLocaleTimeString());
}

function setStatus(text) { document.getElementById("status").textContent = text; }

function fmt(value, digits) {
  if (value === null || value === undefined) return "–";
  if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString();
  return Number(value).toFixed(digits === undefined ? 2 : digits);
}

function render(data) {
  document.getElementById("scope").textContent = data.scope === "all" ? "whole server" : "your tenant";
  document.querySelectorAll("[data-scope=all]").forEach((el) => { el.hidden = data.scope !== "all"; });
  renderTiles(data);
  for (const [name, chart] of Object.entries(CHARTS)) {
    const figure = document.querySelector(`[data-chart=${name}]`);
    if (!figure.hidden) drawChart(figure, chart);
  }
  if (data.scope === "all") {
    table("tenants", ["tenant", "used blocks", "pool share", "hit rate", "cached tokens"],
      data.tenants.map((t) => [t.tenant || "(anonymous)", t.used_blocks, fmt(t.pool_share, 3),
        fmt(t.hit_rate, 3), t.hit_tokens]));
    const tiers = data.tiers.map((t) => [t.tier, t.blocks, t.hit_blocks, t.missed_lookups,
      t.reads ? fmt(1000 * t.read_seconds / t.reads, 1) : "–", t.verification_failures]);
    table("tiers", ["tier", "blocks", "hit blocks", "missed lookups", "read ms (mean)", "failed checks"],
      tiers.length ? tiers : [["none below RAM", "", "", "", "", ""]]);
  }
}

function renderTiles(data) {
  const now = data.now;
  const latest = points.length ? points[points.length - 1] : {};
  const tiles = [
    ["hit rate (since start)", fmt(now.hit_rate, 3)],
    ["cached tokens", fmt(now.hit_tokens, 0)],
    ["prompt tokens", fmt(now.query_tokens, 0)],
    ["cached blocks", fmt(now.used_blocks, 0)],
  ];
  if (data.scope === "all") {
    tiles.push(["pool used", fmt((now.used_blocks + now.reserved_blocks) / now.total_blocks * 100, 1) + "%"],
      ["running", fmt(latest.running, 0)], ["waiting", fmt(latest.waiting, 0)],
      ["decode tokens/s", fmt(latest.decode_tokens_per_s, 1)], ["TTFT p50 s", fmt(latest.ttft_p50, 3)],
      ["TTFT p99 s", fmt(latest.ttft_p99, 3)], ["evicted blocks", fmt(now.evicted_blocks, 0)],
      ["canary checks", fmt(latest.canary_checks, 0)],
      ["canary mismatches", fmt(latest.canary_mismatches, 0)]);
  }
  const box = document.getElementById("tiles");
  box.replaceChildren(...tiles.map(([label, value]) => {
    const tile = document.createElement("div");
    tile.className = "tile";
    tile.dataset.tile = label;
    const b = document.createElement("b");
    b.textContent = value;
    const span = document.createElement("span");
    span.textContent = label;
    tile.append(b, span);
    return tile;
  }));
}

function drawChart(figure, chart) {
  const W = 340, H = 140, PAD = 28;
  const t0 = points.length ? points[0].t : 0, t1 = points.length ? points[points.length - 1].t : 1;
  let top = chart.max || 0;
  for (const [, field] of chart.series) for (const p of points) if (p[field] > top) top = p[field];
  top = top || 1;
  const x = (t) => PAD + (W - PAD - 4) * (t1 > t0 ? (t - t0) / (t1 - t0) : 1);
  const y = (v) => H - 14 - (H - 24) * (v / top);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  for (const frac of [0, 0.5, 1]) {
    const line = document.createElementNS(ns, "line");
    line.setAttribute("class", "grid");
    line.setAttribute("x1", PAD); line.setAttribute("x2", W - 4);
    line.setAttribute("y1", y(top * frac)); line.setAttribute("y2", y(top * frac));
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", 0); label.setAttribute("y", y(top * frac) + 3);
    label.textContent = fmt(top * frac, top * frac >= 10 ? 0 : 2);
    svg.append(line, label);
  }
  chart.series.forEach(([, field], i) => {
    // A gap (no data in an interval) splits the line rather than drawing a zero.
    let run = [];
    const flush = () => {
      if (run.length) {
        const line = document.createElementNS(ns, "polyline");
        line.setAttribute("points", run.join(" "));
        line.setAttribute("stroke", COLORS[i]);
        line.dataset.series = field;
        svg.append(line);
      }
      run = [];
    };
    for (const p of points) {
      if (p[field] === null || p[field] === undefined) flush();
      else run.push(`${x(p.t).toFixed(1)},${y(p[field]).toFixed(1)}`);
    }
    flush();
  });
  const legend = document.createElement("div");
  legend.className = "legend";
  chart.series.forEach(([label], i) => {
    const swatch = document.createElement("i");
    swatch.style.background = COLORS[i];
    legend.append(swatch, label);
  });
  figure.querySelectorAll("svg, .legend").forEach((el) => el.remove());
  figure.append(svg, legend);
}

function table(id, head, rows) {
  const el = document.getElementById(id);
  const tr = (cells, tag) => {
    const row = document.createElement("tr");
    for (const cell of cells) {
      const c = document.createElement(tag);
      c.textContent = cell;
      row.append(c);
    }
    return row;
  };
  el.replaceChildren(tr(head, "th"), ...rows.map((r) => tr(r, "td")));
}

document.addEventListener("DOMContentLoaded", () => {
  takeKeyFromFragment();
  document.getElementById("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("prefixkv-key", document.getElementById("key").value);
    poll();
  });
  poll();
  setInterval(poll, 1000);
});
