"use strict";
/* agentrl view: the page. It reads api/... paths from the server (agentrl/view/server.py), or from
   the JSON block of an exported file. Text from episodes is only ever set as textContent: model
   output is never parsed as HTML. The page's state lives in the URL's hash, so links are shareable. */

const EMBED = (() => {
  const el = document.getElementById("agentrl-data");
  return el ? JSON.parse(el.textContent) : null;
})();
const cache = new Map();

function api(path) {
  if (cache.has(path)) return cache.get(path);
  const p = EMBED
    ? Promise.resolve().then(() => {
        if (path.includes("/search.json")) return localSearch(path);
        if (!(path in EMBED)) throw new Error("not in this export: " + path);
        return EMBED[path];
      })
    : fetch(path).then(async (r) => {
        const j = await r.json();
        if (!r.ok) throw new Error(j.error || r.statusText);
        return j;
      });
  cache.set(path, p);
  p.catch(() => cache.delete(path));
  return p;
}

function searchable(r) {
  const parts = [r.error || ""];
  for (const m of r.messages || []) {
    parts.push(typeof m.content === "string" ? m.content : JSON.stringify(m.content));
    if (m.tool_calls) parts.push(JSON.stringify(m.tool_calls));
  }
  return parts.join("\n");
}

function localSearch(path) {
  const [route, query] = path.split("?");
  const src = route.split("/")[1], p = new URLSearchParams(query || "");
  const q = (p.get("q") || "").trim().toLowerCase(), dump = p.get("dump") || "";
  const inScope = (name) => !dump || (dump === "*" ? name.startsWith("rollout_") : name === dump);
  const matches = {};
  if (q) {
    for (const [key, v] of Object.entries(EMBED)) {
      const k = key.match(/^api\/(\d+)\/([\w.-]+)\/(\d+)\.json$/);
      if (k && k[1] === src && inScope(k[2]) && searchable(v.record).toLowerCase().includes(q)) (matches[k[2]] ||= []).push(+k[3]);
    }
  }
  return { q, matches, truncated: false };
}

// -- state in the URL ------------------------------------------------------------------------------
const DEFAULTS = { view: "", src: "0", dump: "", ep: "", cmp: "", env: "", status: "", rmin: "", rmax: "",
  trunc: "", toolerr: "", q: "", tok: "", color: "mask", ea: "", eb: "", diff: "" };
let S = { ...DEFAULTS };
let listLimit = 300;
let searchNote = "";

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  S = { ...DEFAULTS };
  for (const k of Object.keys(DEFAULTS)) if (p.has(k)) S[k] = p.get(k);
}
function writeHash(push) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(S)) if (v !== "" && v !== DEFAULTS[k]) p.set(k, v);
  const hash = "#" + p.toString();
  if (hash === location.hash) return;
  history[push ? "pushState" : "replaceState"](null, "", hash);
}
function set(changes, push = false) {
  Object.assign(S, changes);
  if (!("ep" in changes || "tok" in changes) && ("dump" in changes || "src" in changes)) listLimit = 300;
  writeHash(push);
  render();
}
window.addEventListener("popstate", () => { readHash(); render(); });
window.addEventListener("hashchange", () => { readHash(); render(); });

// -- DOM helpers -----------------------------------------------------------------------------------
const $ = (sel, root = document) => root.querySelector(sel);
/* Bidirectional-text controls (U+202A-202E, U+2066-2069) in a run's text would reorder what the page shows
   after them (a tool call's arguments, the next tokens); every text the page shows has them as visible marks. */
const BIDI = /[\u202a-\u202e\u2066-\u2069]/g;
const plain = (text) => String(text).replace(BIDI, (c) => `\u27e8U+${c.charCodeAt(0).toString(16).toUpperCase()}\u27e9`);
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) if (kid != null && kid !== false) el.append(kid instanceof Node ? kid : plain(kid));
  return el;
}
function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}
function fmt(x, digits = 3) {
  if (x == null || Number.isNaN(x)) return "–";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return String(x);
  return Math.abs(x) < 0.01 ? x.toPrecision(digits) : x.toFixed(digits);
}
const exact = (x) => (x == null ? "not recorded" : String(x)); // shortest round-trip form, as in the dump
function badge(status) { return h("span", { class: "badge " + status }, status); }
function msg(text, error = false) { const m = $("#msg"); m.textContent = plain(text); m.className = error ? "error" : ""; }
function kv(pairs) {
  const dl = h("dl", { class: "kv" });
  for (const [k, v] of pairs) if (v !== undefined) dl.append(h("dt", {}, k), h("dd", {}, v));
  return dl;
}
const parseRef = (ref) => { const [src, dump, i] = ref.split(":"); return { src, dump, i: +i }; };
const refOf = (src, dump, i) => `${src}:${dump}:${i}`;
function dumpLabel(src, name) {
  const r = src.rollouts.find((x) => x.name === name);
  if (r) return `rollout ${r.rollout_id} (step ${r.step})`;
  const e = src.evals.find((x) => x.name === name);
  if (e) return e.step == null ? "evaluation episodes" : `evaluation at step ${e.step}`;
  return name === "*" ? "all rollouts" : name;
}

// -- rendering -------------------------------------------------------------------------------------
let renderSeq = 0;
async function render() {
  const seq = ++renderSeq;
  document.body.dataset.ready = "0";
  try {
    const listing = await api("api/sources.json");
    const srcSel = $("#src");
    srcSel.replaceChildren(...listing.sources.map((s) => h("option", { value: String(s.id) }, `${s.name} (${s.kind})`)));
    const src = listing.sources[+S.src] || listing.sources[0];
    srcSel.value = String(src.id);
    if (!S.view) S.view = src.kind === "run" ? "run" : "episodes";
    for (const b of document.querySelectorAll("nav button")) b.classList.toggle("active", b.dataset.view === S.view);
    for (const v of ["run", "episodes", "evals"]) $("#view-" + v).hidden = v !== S.view;
    if (S.view === "run") await renderRun(src, seq);
    else if (S.view === "episodes") await renderEpisodes(src, seq);
    else await renderEvals(listing, seq);
    if (seq === renderSeq) { msg(""); document.body.dataset.ready = "1"; }
  } catch (e) {
    if (seq === renderSeq) { msg(String(e.message || e), true); document.body.dataset.ready = "1"; }
  }
}

// -- the run: curves and steps ---------------------------------------------------------------------
const PANELS = [
  ["reward", ["rollout/reward_mean", "rollout/kept_reward_mean"]],
  ["response length (tokens)", ["rollout/response_len_mean"]],
  ["KL", ["train/kl_loss", "train/ppo_kl", "train/rollout_train_kl"]],
  ["entropy", ["train/entropy"]],
  ["trainer vs engine logprobs (mean |diff|)", ["train/rollout_train_abs_diff"]],
  ["episodes failed / truncated (fraction)", ["rollout/status_failed", "rollout/status_truncated"]],
];
const COLORS = ["#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477"];

async function renderRun(src, seq) {
  const run = await api(`api/${src.id}/run.json`);
  if (seq !== renderSeq) return;
  const curves = $("#curves");
  curves.replaceChildren();
  const box = h("div", { class: "curves" });
  const rows = run.metrics || [];
  const panels = PANELS.map(([t, keys]) => [t, keys, "rollout"]);
  const evalKeys = [...new Set(rows.flatMap((r) => Object.keys(r).filter((k) => /^eval\/.+\/reward_mean$/.test(k))))];
  if (evalKeys.length) panels.push(["held-out mean reward", evalKeys.sort(), "eval"]);
  for (const [title, keys, kind] of panels) {
    const series = keys.map((k) => ({ key: k, pts: rows.filter((r) => r[k] != null).map((r) => [r.step, r[k]]) }))
      .filter((s) => s.pts.length);
    if (series.length) box.append(chart(title, series, (step) => openStep(src, step, kind)));
  }
  curves.append(rows.length ? box : h("p", { class: "muted" }, "No metrics.jsonl in this folder."));
  if (run.summary && src.kind === "eval") curves.append(h("h2", {}, "Summary"), summaryTable(run.summary));
  renderSteps(src, rows);
}

function openStep(src, step, kind) {
  const name = kind === "eval" ? src.evals.find((e) => e.step === step)?.name : src.rollouts.find((r) => r.step === step)?.name;
  if (name) set({ view: "episodes", dump: name, ep: "", cmp: "", tok: "" }, true);
  else msg(`no dump for step ${step} (train with --save-debug-rollout-data)`, true);
}

function chart(title, series, onPick) {
  const W = 340, H = 170, L = 44, B = 20, T = 8, R = 8;
  const xs = series.flatMap((s) => s.pts.map((p) => p[0])), ys = series.flatMap((s) => s.pts.map((p) => p[1]));
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
  const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R), Y = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const s = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
  s.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#ccd" }), svg("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#ccd" }));
  const label = (x, y, text, anchor) => { const t = svg("text", { x, y, "font-size": 10, fill: "#6b7385", "text-anchor": anchor }); t.textContent = plain(text); return t; };
  s.append(label(L - 4, T + 8, fmt(y1), "end"), label(L - 4, H - B, fmt(y0), "end"),
    label(L, H - 6, String(x0), "start"), label(W - R, H - 6, String(x1), "end"));
  series.forEach((se, k) => {
    const color = COLORS[k % COLORS.length];
    s.append(svg("polyline", { points: se.pts.map(([x, y]) => `${X(x)},${Y(y)}`).join(" "), fill: "none", stroke: color, "stroke-width": 1.5 }));
    for (const [x, y] of se.pts) {
      const c = svg("circle", { cx: X(x), cy: Y(y), r: 3, fill: color, "data-step": x });
      const t = svg("title", {}); t.textContent = plain(`${se.key}\nstep ${x}: ${y}`); c.append(t);
      c.addEventListener("click", () => onPick(x));
      s.append(c);
    }
  });
  const legend = h("div", { class: "legend" }, series.map((se, k) => h("span", { style: `color:${COLORS[k % COLORS.length]}` }, "● " + se.key)));
  return h("div", { class: "curve" }, h("h3", {}, title), s, legend);
}

function summaryTable(summary) {
  const rows = [];
  const walk = (obj, prefix) => {
    for (const [k, v] of Object.entries(obj)) {
      if (v && typeof v === "object" && !Array.isArray(v) && prefix.split("/").length < 3) walk(v, prefix + k + "/");
      else rows.push([prefix + k, typeof v === "number" ? fmt(v) : JSON.stringify(v)]);
    }
  };
  walk(summary, "");
  return kv(rows);
}

function renderSteps(src, rows) {
  const byStep = new Map(rows.filter((r) => "rollout/reward_mean" in r || "perf/step_time" in r).map((r) => [r.step, r]));
  for (const r of src.rollouts) if (!byStep.has(r.step)) byStep.set(r.step, { step: r.step });
  const steps = [...byStep.keys()].sort((a, b) => a - b);
  const cols = [["reward", "rollout/reward_mean"], ["kept reward", "rollout/kept_reward_mean"], ["length", "rollout/response_len_mean"],
    ["failed", "rollout/status_failed"], ["truncated", "rollout/status_truncated"], ["step s", "perf/step_time"]];
  const table = h("table", { id: "steps-table" }, h("tr", {}, h("th", {}, "step"), cols.map(([n]) => h("th", { class: "num" }, n)), h("th", {}, "episodes")));
  for (const step of steps) {
    const r = byStep.get(step), dump = src.rollouts.find((d) => d.step === step);
    const tr = h("tr", { class: dump ? "clickable" : "", "data-step": step }, h("td", {}, String(step)),
      cols.map(([, k]) => h("td", { class: "num" }, fmt(r[k]))), h("td", {}, dump ? "open ›" : h("span", { class: "muted" }, "not dumped")));
    if (dump) tr.addEventListener("click", () => set({ view: "episodes", dump: dump.name, ep: "", cmp: "", tok: "" }, true));
    table.append(tr);
  }
  $("#steps").replaceChildren(steps.length ? table : h("p", { class: "muted" }, "No training steps in this folder."));
}

// -- episodes: filters, the list of groups, the episode ----------------------------------------------
async function loadEntries(src, dump) {
  const names = dump === "*" ? src.rollouts.map((r) => r.name) : [dump];
  const indexes = await Promise.all(names.map((n) => api(`api/${src.id}/${n}/index.json`)));
  return indexes.flatMap((ix) => ix.index.map((e) => ({ ...e, dump: ix.name, ref: refOf(src.id, ix.name, e.i) })));
}

function passes(e, found) {
  if (S.env && (e.task || e.env_id) !== S.env) return false;
  if (S.status && e.status !== S.status) return false;
  if (S.rmin !== "" && !(e.reward >= +S.rmin)) return false;
  if (S.rmax !== "" && !(e.reward <= +S.rmax)) return false;
  if (S.trunc && e.status !== "truncated") return false;
  if (S.toolerr && !(e.tool_errors > 0)) return false;
  if (found && !found.get(e.dump)?.has(e.i)) return false;
  return true;
}

async function renderEpisodes(src, seq) {
  const dumps = [...src.rollouts.map((r) => r.name), ...src.evals.map((e) => e.name)];
  if (src.rollouts.length > 1) dumps.unshift("*");
  if (!dumps.length) {
    $("#list").replaceChildren(h("p", { class: "muted" }, "This run has no rollout dumps: train with --save-debug-rollout-data."));
    $("#detail").replaceChildren();
    return;
  }
  if (!dumps.includes(S.dump)) S.dump = src.rollouts.length ? src.rollouts[src.rollouts.length - 1].name : dumps[0];
  const dumpSel = $("#f-dump");
  dumpSel.replaceChildren(...dumps.map((d) => h("option", { value: d }, dumpLabel(src, d))));
  dumpSel.value = S.dump;
  const [entries, found] = await Promise.all([loadEntries(src, S.dump),
    S.q ? api(`api/${src.id}/search.json?q=${encodeURIComponent(S.q)}&dump=${encodeURIComponent(S.dump)}`)
      .then((r) => { searchNote = r.truncated ? ` (search stopped early: ${r.searched} of ${r.dumps} dumps searched; narrow it)` : "";
        return new Map(Object.entries(r.matches).map(([d, is]) => [d, new Set(is)])); }) : null]);
  if (!S.q) searchNote = "";
  if (seq !== renderSeq) return;
  const envSel = $("#f-env");
  const envs = [...new Set(entries.map((e) => e.task || e.env_id))].sort();
  envSel.replaceChildren(h("option", { value: "" }, "all"), ...envs.map((v) => h("option", { value: v }, v)));
  envSel.value = S.env;
  $("#f-status").value = S.status; $("#f-rmin").value = S.rmin; $("#f-rmax").value = S.rmax;
  $("#f-trunc").checked = !!S.trunc; $("#f-toolerr").checked = !!S.toolerr; $("#f-q").value = S.q;
  const rows = entries.filter((e) => passes(e, found));
  renderList($("#list"), src, rows, entries.length);
  await renderDetail($("#detail"), src, seq);
}

function renderList(box, src, rows, total) {
  const all = S.dump === "*";
  const head = h("p", { id: "count" }, `${rows.length} of ${total} episodes`, rows.length > listLimit ? ` (the first ${listLimit} shown)` : "",
    searchNote ? h("span", { class: "warn" }, searchNote) : "");
  const table = h("table", { id: "episodes" }, h("tr", {}, h("th", {}, all ? "step · sample" : "sample"), h("th", {}, "status"),
    h("th", { class: "num" }, "reward"), h("th", { class: "num" }, "advantage"), h("th", { class: "num" }, "tokens"),
    h("th", { class: "num" }, "turns"), h("th", { class: "num" }, "tool err"), h("th", {}, "")));
  const shown = rows.slice(0, listLimit);
  const groups = new Map();
  for (const e of shown) { const k = e.dump + "/" + (e.task ? e.task + "/" + e.row : e.group_id); if (!groups.has(k)) groups.set(k, []); groups.get(k).push(e); }
  for (const members of groups.values()) {
    const e0 = members[0], rewards = members.map((e) => e.reward);
    const mean = rewards.reduce((a, b) => a + b, 0) / rewards.length;
    const name = e0.task ? `${e0.task} row ${e0.row}` : `group ${e0.group_id}`;
    table.append(h("tr", { class: "group" }, h("td", { colspan: 8 }, all ? dumpLabel(src, e0.dump) + " · " : "", name,
      ` · rewards ${rewards.map((r) => fmt(r, 2)).join(" ")} (mean ${fmt(mean)})`, " · ", h("span", { class: "muted" }, (e0.preview || "").split(" \u2192 ")[0]))));
    for (const e of members) {
      const tr = h("tr", { class: "clickable episode" + (e.ref === S.ep ? " selected" : "") + (e.ref === S.cmp ? " selected-b" : ""),
        "data-ref": e.ref, "data-status": e.status },
        h("td", {}, String(e.sample_index)), h("td", {}, badge(e.status), e.kept === false ? h("span", { class: "muted", title: "not trained on" }, " dropped") : ""),
        h("td", { class: "num" }, fmt(e.reward)), h("td", { class: "num" }, fmt(e.advantage)),
        h("td", { class: "num" }, `${e.generated_tokens}/${e.response_tokens}`), h("td", { class: "num" }, String(e.turns)),
        h("td", { class: "num" }, e.tool_errors ? String(e.tool_errors) : ""),
        h("td", {}, h("button", { class: "b", type: "button", title: "compare with the open episode",
          onclick: (ev) => { ev.stopPropagation(); set({ cmp: e.ref === S.cmp ? "" : e.ref }, true); } }, "B")));
      tr.addEventListener("click", () => set({ ep: e.ref, tok: "" }, true));
      table.append(tr);
      if (e.error) table.append(h("tr", {}, h("td", {}), h("td", { colspan: 7, class: "muted" }, e.error)));
    }
  }
  const more = rows.length > listLimit ? h("button", { class: "more", type: "button", onclick: () => { listLimit += 1000; render(); } }, "show more") : null;
  box.replaceChildren(head, table, more || "");
}

async function renderDetail(box, src, seq) {
  if (!S.ep) { box.replaceChildren(h("p", { class: "muted" }, "Pick an episode; B puts a second one beside it.")); return; }
  const refs = [S.ep, S.cmp].filter(Boolean);
  const eps = await Promise.all(refs.map((ref) => { const r = parseRef(ref); return api(`api/${r.src}/${r.dump}/${r.i}.json`); }));
  if (seq !== renderSeq) return;
  const listing = await api("api/sources.json");
  const panes = h("div", { class: "panes" + (eps.length > 1 ? " two" : "") });
  eps.forEach((ep, k) => panes.append(renderEpisode(ep, listing.sources[ep.source], k === 0 ? "A" : "B")));
  box.replaceChildren(panes);
  if (S.tok !== "") selectToken($("#pane-a"), +S.tok, false);
}

const SHOWN = new Set(["prompt_ids", "response_ids", "loss_mask", "rollout_logprobs", "reward", "rewards", "status", "error",
  "group_id", "sample_index", "env_id", "label", "messages", "num_turns", "weight_versions", "metrics", "metadata", "kept",
  "advantages", "trainer_logprobs", "entropy", "ref_logprobs", "values", "returns", "task", "row", "prompt_tokens",
  "response_tokens", "generated_tokens"]);

function renderEpisode(ep, src, label) {
  const r = ep.record;
  const pane = h("div", { class: "pane", id: label === "A" ? "pane-a" : "pane-b", "data-ref": refOf(ep.source, ep.dump, ep.i) });
  const close = label === "B" ? h("button", { class: "b", type: "button", onclick: () => set({ cmp: "" }, true) }, "close") : "";
  pane.append(h("h2", {}, `${label}: ${src.name} · ${dumpLabel(src, ep.dump)} · episode ${ep.i} `, close));
  const adv = r.advantages && r.advantages.length ? meanOverMask(r.advantages, r.loss_mask) : null;
  pane.append(kv([
    ["status", badge(r.status)], ["reward", exact(r.reward)],
    ["reward parts", Object.keys(r.rewards || {}).length ? JSON.stringify(r.rewards) : undefined],
    ["advantage", adv == null ? undefined : exact(adv)],
    ["trained on", r.kept == null ? undefined : r.kept ? "yes" : "no (dropped by a filter)"],
    ["environment", r.env_id], ["task", r.task == null ? undefined : `${r.task} row ${r.row}`],
    ["group · sample", `${r.group_id} · ${r.sample_index}`], ["label", r.label == null ? undefined : JSON.stringify(r.label)],
    ["turns", String(r.num_turns)], ["weight versions", (r.weight_versions || []).join(", ")],
    ["error", r.error || undefined],
  ]));
  pane.append(h("h3", {}, "Conversation"), renderConversation(r));
  pane.append(h("h3", {}, "Tokens"), renderTokens(r, ep.token_text || {}, pane, label));
  const other = Object.keys(r).filter((k) => !SHOWN.has(k));
  if (other.length) pane.append(h("details", { open: true, class: "other-fields" }, h("summary", {}, "More fields"),
    kv(other.map((k) => [k, h("pre", { class: "text" }, JSON.stringify(r[k], null, 1))]))));
  pane.append(h("details", {}, h("summary", {}, "Episode metrics"), kv(Object.entries(r.metrics || {}).map(([k, v]) => [k, fmt(v, 4)]))));
  pane.append(h("details", {}, h("summary", {}, "Metadata"), h("pre", { class: "text" }, JSON.stringify(r.metadata || {}, null, 1))));
  return pane;
}

function meanOverMask(values, mask) {
  const kept = values.filter((_, j) => mask[j]);
  const xs = kept.length ? kept : values;
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}

/* <tag>...</tag> spans of a message, each from an opening tag to the first closing one after it, found in
   one pass (a model that writes ten thousand unclosed <think> tags costs linear time, not quadratic). */
const TAG = /<(\/?)(tool_call|tool_response|search|information|answer|think)>/g;
function tagged(text) {
  const tags = [...text.matchAll(TAG)], closes = {}, next = {}, spans = [];
  for (const m of tags) if (m[1]) (closes[m[2]] ||= []).push(m.index);
  let last = 0;
  for (const m of tags) {
    if (m[1] || m.index < last) continue;
    const ends = closes[m[2]] || [];
    let k = next[m[2]] || 0;
    while (k < ends.length && ends[k] < m.index) k++;
    next[m[2]] = k;
    if (k === ends.length) continue;
    const end = ends[k] + m[2].length + 3;
    spans.push([m.index, end, m[2]]);
    last = end;
  }
  return spans;
}
function renderText(text) {
  const pre = h("pre", {});
  let last = 0;
  for (const [start, end, tag] of tagged(text)) {
    pre.append(plain(text.slice(last, start)), h("span", { class: "toolcall", "data-tag": tag }, text.slice(start, end)));
    last = end;
  }
  pre.append(plain(text.slice(last)));
  return pre;
}

function renderConversation(r) {
  const box = h("div", { class: "conversation" });
  let turn = 0;
  for (const m of r.messages || []) {
    const role = m.role || "?";
    let title = role;
    if (role === "assistant") { const v = (r.weight_versions || [])[turn]; turn += 1; title = `assistant · turn ${turn}` + (v != null ? ` · weights v${v}` : ""); }
    if (role === "tool" && m.name) title += ` · ${m.name}`;
    const content = typeof m.content === "string" ? m.content : JSON.stringify(m.content, null, 1);
    const isError = role === "tool" && /^\s*(error|exception|traceback)/i.test(content || "");
    const div = h("div", { class: `msg ${role}${isError ? " error" : ""}` }, h("div", { class: "role" }, title), renderText(content || ""));
    for (const call of m.tool_calls || []) {
      const f = call.function || call;
      div.append(h("pre", { class: "toolcall" }, `${f.name}(${typeof f.arguments === "string" ? f.arguments : JSON.stringify(f.arguments)})`));
    }
    box.append(div);
  }
  if (r.error) box.append(h("div", { class: "msg error" }, h("div", { class: "role" }, "episode error"), h("pre", {}, r.error)));
  return box;
}

// -- tokens ------------------------------------------------------------------------------------------
const HEAT = {
  mask: null,
  logprob: { label: "engine logprob (darker: less likely)", get: (r, j) => r.rollout_logprobs?.[j], color: (v) => `rgba(229,57,53,${Math.min(1, -v / 8)})` },
  diff: { label: "|trainer − engine| (log scale, 1e-6 to 1)", get: (r, j) => (r.trainer_logprobs ? r.trainer_logprobs[j] - r.rollout_logprobs[j] : null),
    color: (v) => `rgba(123,31,162,${Math.max(0, Math.min(1, (Math.log10(Math.abs(v) + 1e-12) + 6) / 6))})` },
  entropy: { label: "entropy (darker: higher, up to 5 nats)", get: (r, j) => r.entropy?.[j], color: (v) => `rgba(16,150,24,${Math.min(1, v / 5)})` },
  advantage: { label: "advantage (green +, red −)", get: (r, j) => r.advantages?.[j],
    color: (v) => (v >= 0 ? `rgba(16,150,24,${Math.min(1, v / 2)})` : `rgba(229,57,53,${Math.min(1, -v / 2)})`) },
};

/* A token's text as shown: empty is \u2205, a newline \u21b5, other control characters their Control Pictures,
   invisible ones (zero-width, BOM, bidi controls) a visible mark, so every token has a width and can be clicked. */
const INVISIBLE = /[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0]/g;
function showText(text) {
  if (text === "") return "\u2205";
  return text.replace(/[\u0000-\u0008\u000b-\u001f\u007f]/g, (c) => String.fromCharCode(c === "\u007f" ? 0x2421 : 0x2400 + c.charCodeAt(0)))
    .replace(INVISIBLE, (c) => `\u27e8U+${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0")}\u27e9`)
    .replace(/\n/g, "\u21b5\n");
}

function renderTokens(r, texts, pane, label) {
  const prompt = r.prompt_ids || [], resp = r.response_ids || [], mask = r.loss_mask || [];
  const ids = prompt.concat(resp), P = prompt.length;
  const mode = Object.hasOwn(HEAT, S.color) ? S.color : "mask"; // a link cannot name "__proto__"
  const colorSel = h("select", { class: "color-mode", onchange: (ev) => set({ color: ev.target.value }) },
    Object.keys(HEAT).map((k) => h("option", { value: k }, k === "mask" ? "loss mask" : HEAT[k].label)));
  colorSel.value = mode;
  const trained = mask.reduce((a, b) => a + b, 0);
  const bar = h("div", { class: "tokbar" }, h("label", {}, "colour ", colorSel),
    h("span", {}, h("span", { class: "swatch", style: "background:var(--trained)" }), "trained on (loss mask 1)"),
    h("span", {}, h("span", { class: "swatch", style: "background:var(--masked)" }), "prompt (mask 0)"),
    h("span", {}, h("span", { class: "swatch", style: "background:var(--obs)" }), "observation / template (mask 0)"),
    h("span", { class: "muted" }, `${P} prompt + ${resp.length} response tokens, ${trained} trained on`),
    r.trainer_logprobs ? "" : h("span", { class: "muted" }, "trainer logprobs not recorded"));
  const box = h("div", { class: "tokens" });
  const heat = HEAT[mode];
  for (let k = 0; k < ids.length; k++) {
    const j = k - P, m = j < 0 ? 0 : mask[j];
    const span = document.createElement("span");
    span.className = "tok " + (m ? "trained" : "masked " + (j < 0 ? "prompt" : "obs")) + (heat ? " heat" : "");
    span.dataset.pos = k;
    const t = texts[String(ids[k])];
    span.textContent = t == null ? `[${ids[k]}]` : showText(t);
    if (heat && m) { const v = heat.get(r, j); if (v != null) span.style.background = heat.color(v); }
    box.append(span);
  }
  box.addEventListener("click", (ev) => { const t = ev.target.closest(".tok"); if (t) selectToken(pane, +t.dataset.pos, label === "A"); });
  pane._tokens = { r, texts, ids, P };
  return h("div", { class: "token-view" }, bar, box, h("table", { class: "tokdetail" },
    h("tr", {}, h("td", { colspan: 2, class: "muted" }, "Click a token for its numbers."))));
}

function selectToken(pane, k, remember = true) {
  if (!pane || !pane._tokens) return;
  const { r, texts, ids, P } = pane._tokens;
  if (!(k >= 0 && k < ids.length)) return;
  for (const el of pane.querySelectorAll(".tok.sel")) el.classList.remove("sel");
  pane.querySelector(`.tok[data-pos="${k}"]`)?.classList.add("sel");
  const j = k - P, resp = j >= 0;
  const at = (arr) => (resp && arr ? arr[j] : null);
  const engine = at(r.rollout_logprobs), trainer = at(r.trainer_logprobs);
  const rows = [
    ["position", resp ? `${k} (response token ${j})` : `${k} (prompt)`], ["token id", String(ids[k])],
    ["text", JSON.stringify(texts[String(ids[k])] ?? null)],
    ["loss_mask", resp ? String(r.loss_mask[j]) : "0 (prompt)"],
    ["engine_logprob", resp ? exact(engine) : "–"], ["trainer_logprob", resp ? exact(trainer) : "–"],
    ["difference", resp && engine != null && trainer != null ? exact(trainer - engine) : "–"],
    ["entropy", resp ? exact(at(r.entropy)) : "–"], ["advantage", resp ? exact(at(r.advantages)) : "–"],
  ];
  if (r.ref_logprobs) rows.push(["ref_logprob", resp ? exact(at(r.ref_logprobs)) : "–"]);
  if (r.values) rows.push(["value", resp ? exact(at(r.values)) : "–"]);
  const names = { engine_logprob: "engine logprob", trainer_logprob: "trainer logprob", difference: "trainer − engine", loss_mask: "loss mask" };
  pane.querySelector("table.tokdetail").replaceChildren(...rows.map(([f, v]) => h("tr", { "data-field": f }, h("td", {}, names[f] || f), h("td", {}, v))));
  if (remember) { S.tok = String(k); writeHash(false); }
}

// -- two evaluations side by side ----------------------------------------------------------------------
async function renderEvals(listing, seq) {
  const options = listing.sources.flatMap((s) => s.evals.map((e) => [`${s.id}:${e.name}`, `${s.name} · ${dumpLabel(s, e.name)}`]));
  const [selA, selB] = [$("#e-a"), $("#e-b")];
  for (const sel of [selA, selB]) sel.replaceChildren(...options.map(([v, t]) => h("option", { value: v }, t)));
  if (options.length < 1) {
    $("#eval-table").replaceChildren(h("p", { class: "muted" }, "No evaluation episodes: give evaluation folders, or runs trained with --save-debug-rollout-data."));
    return;
  }
  const values = options.map((o) => o[0]);
  if (!values.includes(S.ea)) S.ea = values[0];
  if (!values.includes(S.eb)) S.eb = values[values.length - 1];
  selA.value = S.ea; selB.value = S.eb; $("#e-diff").checked = !!S.diff;
  const load = (v) => { const [src, name] = v.split(":"); return api(`api/${src}/${name}/index.json`).then((ix) => ix.index.map((e) => ({ ...e, ref: refOf(src, name, e.i) }))); };
  const [a, b] = await Promise.all([load(S.ea), load(S.eb)]);
  if (seq !== renderSeq) return;
  const key = (e) => `${e.task ?? e.env_id}|${e.row ?? e.group_id}|${e.sample_index}`;
  const bByKey = new Map(b.map((e) => [key(e), e]));
  const pairs = a.map((e) => [e, bByKey.get(key(e))]).filter(([, y]) => y);
  const mean = (xs) => (xs.length ? xs.reduce((s, x) => s + x, 0) / xs.length : null);
  const better = pairs.filter(([x, y]) => y.reward > x.reward).length, worse = pairs.filter(([x, y]) => y.reward < x.reward).length;
  const shown = S.diff ? pairs.filter(([x, y]) => x.reward !== y.reward) : pairs;
  const table = h("table", { id: "eval-pairs" }, h("tr", {}, h("th", {}, "task"), h("th", { class: "num" }, "row"), h("th", { class: "num" }, "sample"),
    h("th", { class: "num" }, "reward A"), h("th", { class: "num" }, "reward B"), h("th", {}, "status A"), h("th", {}, "status B"), h("th", {}, "prompt")));
  for (const [x, y] of shown.slice(0, listLimit)) {
    const tr = h("tr", { class: "clickable" + (x.ref === S.ep ? " selected" : ""), "data-ref": x.ref },
      h("td", {}, x.task ?? x.env_id), h("td", { class: "num" }, String(x.row ?? x.group_id)), h("td", { class: "num" }, String(x.sample_index)),
      h("td", { class: "num" }, fmt(x.reward)), h("td", { class: "num" }, fmt(y.reward)), h("td", {}, badge(x.status)), h("td", {}, badge(y.status)),
      h("td", { class: "preview" }, (x.preview || "").split(" \u2192 ")[0]));
    tr.addEventListener("click", () => set({ ep: x.ref, cmp: y.ref, tok: "" }, true));
    table.append(tr);
  }
  $("#eval-table").replaceChildren(h("p", { id: "eval-summary" },
    `${pairs.length} episodes in both · mean reward A ${fmt(mean(pairs.map((p) => p[0].reward)))} → B ${fmt(mean(pairs.map((p) => p[1].reward)))}`,
    ` · better in B: ${better}, worse: ${worse}` + (shown.length > listLimit ? ` · the first ${listLimit} shown` : "")), table);
  const src = listing.sources[+S.src] || listing.sources[0];
  await renderDetail($("#eval-detail"), src, seq);
}

// -- wiring ------------------------------------------------------------------------------------------
function wire() {
  for (const b of document.querySelectorAll("nav button")) b.addEventListener("click", () => set({ view: b.dataset.view }, true));
  $("#src").addEventListener("change", (ev) => set({ src: ev.target.value, dump: "", ep: "", cmp: "", tok: "", env: "", view: "" }, true));
  $("#f-dump").addEventListener("change", (ev) => set({ dump: ev.target.value }, true));
  const filters = { "f-env": "env", "f-status": "status", "f-rmin": "rmin", "f-rmax": "rmax", "f-q": "q" };
  for (const [id, k] of Object.entries(filters)) $("#" + id).addEventListener("change", (ev) => set({ [k]: ev.target.value.trim() }));
  $("#f-trunc").addEventListener("change", (ev) => set({ trunc: ev.target.checked ? "1" : "" }));
  $("#f-toolerr").addEventListener("change", (ev) => set({ toolerr: ev.target.checked ? "1" : "" }));
  $("#filters").addEventListener("submit", (ev) => ev.preventDefault());
  $("#eval-pick").addEventListener("submit", (ev) => ev.preventDefault());
  $("#e-a").addEventListener("change", (ev) => set({ ea: ev.target.value, ep: "", cmp: "" }, true));
  $("#e-b").addEventListener("change", (ev) => set({ eb: ev.target.value, ep: "", cmp: "" }, true));
  $("#e-diff").addEventListener("change", (ev) => set({ diff: ev.target.checked ? "1" : "" }));
}

wire();
readHash();
render();
