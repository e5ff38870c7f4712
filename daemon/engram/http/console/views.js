// The console's views; each loads what it shows through rpc.js when it is opened.
import { $, clear, describe, el, svg, when } from "./dom.js";
import { layout } from "./force.js";
import { ProofFailure, fromBase64, verifyInclusion } from "./proof.js";
import { call, follow } from "./rpc.js";

// --- memory: search, browse (timeline, tags, sessions), an episode's detail ----------------------

let browseCursor = null;

function namespace() {
  const value = $("#memory-namespace").value.trim();
  return value ? { namespace: value } : {};
}

function episodeCard(episode, extra) {
  const tags = el("span", {}, ...episode.tags.map((tag) => el("span", { class: "tag", onclick: (e) => { e.stopPropagation(); browseBy({ tag }); } }, tag)));
  const session = episode.session
    ? el("a", { href: "#memory", onclick: (e) => { e.preventDefault(); e.stopPropagation(); browseBy({ session: episode.session }); } }, `session ${episode.session}`)
    : null;
  return el("div", { class: "episode", "data-id": episode.id, onclick: () => showEpisode(episode.id) },
    el("div", {}, episode.text),
    el("div", { class: "meta" }, `${when(episode.time)} · ${episode.kind} `, session, " ", tags, extra ? ` · ${extra}` : ""));
}

async function search(event) {
  event.preventDefault();
  const status = $("#memory-status");
  $("#memory-more").hidden = true;
  try {
    const found = await call("memory.recall", { query: $("#memory-query").value, k: 20, ...namespace() });
    const results = clear($("#memory-results"));
    status.textContent = `${found.hits.length} memories in ${found.namespace}`;
    for (const hit of found.hits) results.append(episodeCard(hit, `score ${hit.score.toFixed(3)}`));
  } catch (error) {
    status.textContent = describe(error);
  }
}

function browseBy(filter) {
  $("#browse-session").value = filter.session || "";
  $("#browse-tag").value = filter.tag || "";
  $("#browse-kind").value = filter.kind || "";
  browse(null, true);
}

// memory.list pages newest first; episodes are grouped by day (the timeline). memory.list filters
// by session and kind; a tag is filtered here, on each page.
async function browse(event, fresh = true) {
  if (event) event.preventDefault();
  const results = $("#memory-results"), status = $("#memory-status");
  const params = { limit: 50, ...namespace() };
  const session = $("#browse-session").value.trim(), kind = $("#browse-kind").value.trim(), tag = $("#browse-tag").value.trim();
  if (session) params.session = session;
  if (kind) params.kind = kind;
  if (!fresh && browseCursor) params.before = browseCursor;
  try {
    const page = await call("memory.list", params);
    if (fresh) { clear(results); delete results.dataset.lastDay; }  // after the answer: a second load replaces
    const shown = tag ? page.episodes.filter((e) => e.tags.includes(tag)) : page.episodes;
    let lastDay = results.dataset.lastDay || "";
    for (const episode of shown) {
      const day = when(episode.time).slice(0, 10);
      if (day !== lastDay) { results.append(el("div", { class: "day" }, day)); lastDay = day; }
      results.append(episodeCard(episode));
    }
    results.dataset.lastDay = lastDay;
    browseCursor = page.next;
    $("#memory-more").hidden = !page.next;
    status.textContent = `${results.querySelectorAll(".episode").length} episodes${tag ? ` tagged ${tag}` : ""}${session ? ` of session ${session}` : ""}`;
  } catch (error) {
    status.textContent = describe(error);
  }
}

async function showEpisode(id) {
  const detail = clear($("#memory-detail"));
  try {
    const { episodes: [episode] } = await call("memory.get", { ids: [id], ...namespace() });
    const rows = ["id", "namespace", "time", "recorded_at", "session", "kind", "tags", "source", "importance", "pinned", "access_count", "embedder"]
      .map((key) => el("tr", {}, el("th", {}, key), el("td", {}, key.endsWith("time") || key === "recorded_at" ? when(episode[key]) : JSON.stringify(episode[key]))));
    detail.append(el("h3", {}, "Episode"), el("p", {}, episode.text), el("table", {}, ...rows),
      el("pre", {}, JSON.stringify(episode.metadata, null, 2)));
  } catch (error) {
    detail.append(el("p", { class: "error" }, describe(error)));
  }
}

export function memoryView() {
  $("#memory-search").addEventListener("submit", search);
  $("#memory-browse").addEventListener("submit", (e) => browse(e, true));
  $("#memory-more").addEventListener("click", () => browse(null, false));
  return () => { if (!$("#memory-results").children.length) browse(null, true); };
}

// --- knowledge graph: memory.graph.query as a force-directed SVG --------------------------------

async function showGraph(event) {
  if (event) event.preventDefault();
  const status = $("#graph-status"), canvas = clear($("#graph-svg"));
  try {
    const found = await call("memory.graph.query", { concept: $("#graph-concept").value.trim(), depth: Number($("#graph-depth").value), ...namespace() });
    // Relations name their ends (src, dst) by concept name: the nodes are keyed by name.
    const nodes = [{ id: found.concept.name, name: found.concept.name, root: true }, ...found.neighbours.map((n) => ({ id: n.concept.name, name: n.concept.name }))];
    const known = new Set(nodes.map((n) => n.id));
    const edges = found.relations.filter((r) => known.has(r.src) && known.has(r.dst)).map((r) => ({ source: r.src, target: r.dst, type: r.type }));
    const pos = layout(nodes, edges, 800, 560);
    const at = new Map(nodes.map((n, i) => [n.id, pos[i]]));
    for (const e of edges) {
      const a = at.get(e.source), b = at.get(e.target);
      canvas.append(svg("line", { class: "edge", x1: a.x, y1: a.y, x2: b.x, y2: b.y }));
      canvas.append(svg("text", { class: "edge-label", x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 }, e.type));
    }
    nodes.forEach((n, i) => {
      const group = svg("g", { class: n.root ? "node root" : "node", "data-concept": n.name });
      group.append(svg("circle", { cx: pos[i].x, cy: pos[i].y, r: n.root ? 9 : 7 }), svg("text", { x: pos[i].x + 11, y: pos[i].y + 4 }, n.name));
      group.addEventListener("click", () => { $("#graph-concept").value = n.name; showGraph(); });
      canvas.append(group);
    });
    status.textContent = `${nodes.length} concepts, ${edges.length} relations${found.truncated ? " (truncated)" : ""}`;
  } catch (error) {
    status.textContent = describe(error);
  }
}

export function graphView() {
  $("#graph-form").addEventListener("submit", showGraph);
  return () => {};
}

// --- audit log: entries, and each one's inclusion proof verified here --------------------------

const audit = { vkey: null, origin: null, entries: new Map() };

export async function proveEntry(seq, canonical) {
  const cp = await call("audit.checkpoint", { fresh: true });
  const proof = await call("audit.prove", { seq, size: cp.size });
  return verifyInclusion({ seq, canonical, proof, note: cp.note, vkey: audit.vkey, origin: audit.origin });
}

async function verifyRow(seq, cell) {
  cell.textContent = "verifying…";
  cell.className = "";
  try {
    const ok = await proveEntry(seq, fromBase64(audit.entries.get(seq).canonical));
    cell.textContent = `verified: in the tree of ${ok.size} signed by ${ok.key}`;
    cell.className = "ok";
  } catch (error) {
    cell.textContent = error instanceof ProofFailure ? `FAILED: ${error.message}` : describe(error);
    cell.className = "fail";
  }
}

async function loadAudit() {
  const status = $("#audit-status");
  try {
    const key = await call("audit.pubkey");
    audit.vkey = key.vkey;
    audit.origin = key.origin;
    $("#audit-key").textContent = `origin ${key.origin} · verifier key ${key.vkey} (compare with engram audit pubkey)`;
    const { size } = await call("audit.entries", { start: 0, limit: 1 });
    const start = Math.max(0, size - 50);
    const page = await call("audit.entries", { start, limit: 50 });
    const body = clear($("#audit-table tbody"));  // after the answers: a second load replaces, never adds
    for (const item of page.entries.reverse()) {
      audit.entries.set(item.seq, item);
      const e = item.entry, detail = e.detail || {};
      const cell = el("td", {});
      const button = el("button", { type: "button", class: "verify", "data-seq": item.seq, onclick: () => verifyRow(item.seq, cell) }, "verify");
      cell.append(button);
      body.append(el("tr", { "data-seq": item.seq }, el("td", {}, item.seq), el("td", {}, e.time), el("td", {}, detail.method || e.kind),
        el("td", {}, e.principal ? `uid ${e.principal.uid}${detail.token ? ` (token ${detail.token})` : ""}` : ""), el("td", {}, detail.outcome || ""), cell));
    }
    status.textContent = `${page.size} entries; the newest ${page.entries.length} shown`;
  } catch (error) {
    status.textContent = describe(error);
  }
}

export function auditView() {
  $("#audit-refresh").addEventListener("click", loadAudit);
  return loadAudit;
}

// --- sleep reports ----------------------------------------------------------------------------

async function loadSleep() {
  const status = $("#sleep-status");
  try {
    const { reports } = await call("sleep.reports", { limit: 20 });
    const list = clear($("#sleep-reports"));  // after the answer: a second load replaces, never adds
    status.textContent = reports.length ? `${reports.length} recent runs` : "no consolidation run yet";
    for (const r of reports) {
      const stages = el("table", {}, el("tr", {}, el("th", {}, "stage"), el("th", {}, "namespace"), el("th", {}, "s"), el("th", {}, "figures")),
        ...r.stages.map((s) => el("tr", {}, el("td", {}, s.name + (s.rolled_back ? " (rolled back)" : "")), el("td", {}, s.namespace || ""),
          el("td", {}, s.seconds.toFixed(2)), el("td", {}, JSON.stringify(s.figures)))));
      list.append(el("div", { class: "report" },
        el("strong", {}, `run ${r.run}`), ` · ${r.trigger} · ${when(r.started_at)} · ${r.seconds.toFixed(1)} s · ${r.outcome || "running"}`,
        r.error ? el("p", { class: "error" }, r.error) : null, stages));
    }
  } catch (error) {
    status.textContent = describe(error);
  }
}

export function sleepView() { return loadSleep; }

// --- router: each route's accuracy-cost curve (route.curve), its threshold marked -------------

const CURVE_COLOURS = ["#2757c4", "#c4572b", "#1c7c3a", "#8a3fb8", "#a3861b", "#2b8fa3"];

function nearest(points, threshold) {
  return points.reduce((best, p) => (Math.abs(p.threshold - threshold) < Math.abs(best.threshold - threshold) ? p : best));
}

async function loadRouter() {
  const status = $("#router-status");
  let routes, curves;
  try {
    ({ routes } = await call("route.stats"));
    curves = await Promise.all(routes.map((r) => call("route.curve", { route: r.route })));
  } catch (error) {
    status.textContent = describe(error);
    return;
  }
  // Drawn after the answers: a second load replaces the drawing, never adds to it.
  const canvas = clear($("#router-svg")), body = clear($("#router-table tbody"));
  const [w, h, left, bottom] = [640, 400, 50, 40];
  const x = (share) => left + share * (w - left - 20), y = (rate) => h - bottom - rate * (h - bottom - 20);
  for (let t = 0; t <= 1.0001; t += 0.25) {
    canvas.append(svg("line", { class: "grid", x1: x(0), y1: y(t), x2: x(1), y2: y(t) }), svg("line", { class: "grid", x1: x(t), y1: y(0), x2: x(t), y2: y(1) }));
    canvas.append(svg("text", { class: "label", x: x(t) - 8, y: h - bottom + 16 }, t.toFixed(2)), svg("text", { class: "label", x: 8, y: y(t) + 4 }, t.toFixed(2)));
  }
  canvas.append(svg("line", { class: "axis", x1: x(0), y1: y(0), x2: x(1), y2: y(0) }), svg("line", { class: "axis", x1: x(0), y1: y(0), x2: x(0), y2: y(1) }));
  canvas.append(svg("text", { class: "label", x: w / 2 - 60, y: h - 6 }, "cost: slow share"), svg("text", { class: "label", x: left + 6, y: 14 }, "accuracy: agreement with slow"));
  let drawn = 0;
  for (const [i, r] of routes.entries()) {
    const curve = curves[i];
    const colour = CURVE_COLOURS[i % CURVE_COLOURS.length];
    if (curve.points.length) {
      const line = svg("polyline", { class: "curve", "data-route": r.route, points: curve.points.map((p) => `${x(p.slow_share)},${y(p.accuracy)}`).join(" ") });
      line.style.stroke = colour;
      const here = nearest(curve.points, curve.threshold);
      const mark = svg("circle", { class: "point", cx: x(here.slow_share), cy: y(here.accuracy), r: 5 });
      mark.style.fill = colour;
      canvas.append(line, mark, svg("text", { class: "label", x: x(here.slow_share) + 8, y: y(here.accuracy) - 6 }, `${r.route} @ ${curve.threshold}`));
      drawn++;
    }
    body.append(el("tr", {}, el("td", {}, r.route), el("td", {}, r.mode), el("td", {}, r.requests), el("td", {}, r.slow_share),
      el("td", {}, r.agreement_rate ?? "–"), el("td", {}, r.threshold), el("td", {}, curve.samples), el("td", {}, r.latency_ms.p50 ?? "–")));
  }
  status.textContent = `${routes.length} routes; ${drawn} with a curve (decisions where both targets ran)`;
}

export function routerView() { return loadRouter; }

// --- live events ------------------------------------------------------------------------------

const MAX_SHOWN = 200;  // rows kept in the list: older ones are dropped
let following = null;

function showEvent(kind, data) {
  const list = $("#events-list");
  if (kind === "subscribed") {
    $("#events-status").textContent = `following ${data.topics.length} topics`;
    return;
  }
  const text = kind === "closed" ? `closed: ${data.reason} (${data.dropped} dropped)` : `${when(data.time)} ${data.topic} ${JSON.stringify(data.data)}`;
  list.prepend(el("li", { "data-topic": data.topic || kind }, text));
  while (list.children.length > MAX_SHOWN) list.lastChild.remove();
}

async function toggleEvents(event) {
  event.preventDefault();
  if (following) { following.abort(); return; }
  following = new AbortController();
  $("#events-toggle").textContent = "Stop";
  const topics = $("#events-topics").value.split(",").map((t) => t.trim()).filter(Boolean);
  try {
    await follow(topics, showEvent, following.signal);
    $("#events-status").textContent = "the stream ended";
  } catch (error) {
    $("#events-status").textContent = error.name === "AbortError" ? "stopped" : describe(error);
  } finally {
    following = null;
    $("#events-toggle").textContent = "Follow";
  }
}

export function eventsView() {
  $("#events-form").addEventListener("submit", toggleEvents);
  return () => {};
}
