/* mmsafe sample browser: filters, pages and shows the items of a run (one per generation, every judge's verdict).
 *
 * Static mode (report.html): the items, images and facets are in the JSON block "mmsafe-browser-data".
 * Server mode (mmsafe view): the same page asks its own server for /api/facets, /api/items and /img/<sha256>.
 * Every string from the data is model output or dataset text, so attacker-controlled: it reaches the page only
 * through textContent and createElement, never innerHTML; an image src is only a data:image/ URI (static) or
 * /img/ + 64 hex digits (server), checked here before use.
 */
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const cfgEl = $("mmsafe-browser-config");
  if (!cfgEl) return;
  const cfg = JSON.parse(cfgEl.textContent);
  const SERVER = cfg.mode === "server";
  const PAGE = Math.max(1, Math.min(500, Number(cfg.page_size) || 50));
  const FILTERS = ["model", "benchmark", "attack", "defense", "category", "expected", "judge", "verdict"];
  const DATA_URI = /^data:image\/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=]+$/;
  const IMG_PATH = /^\/img\/[0-9a-f]{64}$/;
  const SHA = /^[0-9a-f]{64}$/;
  const data = SERVER ? null : JSON.parse($("mmsafe-browser-data").textContent);
  const images = (data && data.images) || {};
  const state = { offset: 0, total: 0, seq: 0 };

  function safeSrc(src) {
    if (typeof src !== "string") return null;
    return (SERVER ? IMG_PATH : DATA_URI).test(src) ? src : null;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function filters() {
    const f = {};
    for (const name of FILTERS) {
      const v = $("mb-f-" + name).value;
      if (v) f[name] = v;
    }
    const q = $("mb-search").value.trim();
    if (q) f.search = q;
    return f;
  }

  function fillFacets(facets) {
    for (const name of FILTERS) {
      const sel = $("mb-f-" + name);
      for (const value of facets[name] || []) {
        const o = el("option", null, value);
        o.value = String(value);
        sel.appendChild(o);
      }
    }
  }

  /* --- the filter state in the URL fragment: #attack=figstep&verdict=success ---------------------------- */
  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    for (const name of FILTERS) {
      const v = p.get(name);
      if (v === null) continue;
      const sel = $("mb-f-" + name);
      if ([...sel.options].some((o) => o.value === v)) sel.value = v;
    }
    if (p.get("search") !== null) $("mb-search").value = p.get("search");
  }

  function writeHash() {
    const text = new URLSearchParams(filters()).toString();
    try {
      history.replaceState(null, "", text ? "#" + text : location.pathname + location.search);
    } catch (e) {
      /* some file: contexts refuse; the filters still work */
    }
  }

  /* --- static mode: filter and page in memory ------------------------------------------------------------ */
  function verdictCodes(v) {
    const codes = [];
    if (v.error) codes.push("error");
    if (v.success === true) codes.push("success");
    else if (v.success === false) codes.push("not-success");
    if (v.refused === true) codes.push("refused");
    return codes;
  }

  function matches(item, f) {
    for (const name of ["model", "benchmark", "attack", "defense", "category", "expected"]) {
      if (f[name] !== undefined && item[name] !== f[name]) return false;
    }
    if (f.judge !== undefined || f.verdict !== undefined) {
      const ok = item.verdicts.some(
        (v) => (f.judge === undefined || v.judge === f.judge) && (f.verdict === undefined || verdictCodes(v).includes(f.verdict))
      );
      if (!ok) return false;
    }
    if (f.search !== undefined) {
      const q = f.search.toLowerCase();
      const hay = item.prompt.map((p) => p.text).join("\n") + "\n" + (item.response || "");
      if (!hay.toLowerCase().includes(q)) return false;
    }
    return true;
  }

  let matched = null; // static mode: the filtered items (recomputed when a filter changes)

  function staticPage(offset) {
    if (matched === null) {
      const f = filters();
      matched = data.items.filter((it) => matches(it, f));
    }
    return Promise.resolve({ total: matched.length, offset: offset, items: matched.slice(offset, offset + PAGE) });
  }

  /* --- server mode: ask /api/items ------------------------------------------------------------------------ */
  function serverPage(offset) {
    const p = new URLSearchParams(filters());
    p.set("offset", String(offset));
    p.set("limit", String(PAGE));
    return fetch("/api/items?" + p.toString(), { headers: { Accept: "application/json" } }).then((r) => {
      if (!r.ok) throw new Error("the server answered " + r.status);
      return r.json();
    });
  }

  /* --- rendering --------------------------------------------------------------------------------------------- */
  function imageSources(sha) {
    if (SERVER) return SHA.test(sha) ? { thumb: "/img/" + sha, full: "/img/" + sha } : { error: "bad image id" };
    return images[sha] || { error: "image missing from the report" };
  }

  function placeholder(text) {
    return el("span", "mb-noimg", text);
  }

  function thumb(sha) {
    const src = imageSources(sha);
    const t = safeSrc(src.thumb);
    if (src.error || !t) return placeholder(src.error || "image unreadable");
    const img = el("img", "mb-thumb");
    img.alt = "image " + String(sha).slice(0, 12);
    img.title = "sha256 " + String(sha);
    img.tabIndex = 0;
    img.addEventListener("error", () => img.replaceWith(placeholder("image unreadable")));
    const open = () => openLightbox(safeSrc(src.full) || t, safeSrc(src.full) ? "" : "full size: mmsafe view");
    img.addEventListener("click", open);
    img.addEventListener("keydown", (e) => {
      if (e.key === "Enter") open();
    });
    img.src = t;
    return img;
  }

  function badge(cls, text) {
    return el("span", "mb-badge " + cls, text);
  }

  function tri(value, yes, no) {
    return value === true ? yes : value === false ? no : "—";
  }

  function verdictTable(verdicts) {
    const table = el("table", "mb-verdicts");
    const head = el("tr");
    for (const h of ["judge", "verdict", "refused", "score", "label", "rationale"]) head.appendChild(el("th", null, h));
    table.appendChild(el("thead")).appendChild(head);
    const body = el("tbody");
    for (const v of verdicts) {
      const tr = el("tr", v.error ? "mb-v-error" : v.success === true ? "mb-v-success" : "");
      tr.appendChild(el("td", null, v.judge));
      tr.appendChild(el("td", null, v.error ? "error: " + v.error : tri(v.success, "success", "not success")));
      tr.appendChild(el("td", null, tri(v.refused, "refused", "no")));
      tr.appendChild(el("td", null, typeof v.score === "number" ? v.score.toFixed(3) : "—"));
      tr.appendChild(el("td", null, v.label === null || v.label === undefined ? "—" : v.label));
      tr.appendChild(el("td", "mb-rationale", v.rationale || ""));
      body.appendChild(tr);
    }
    table.appendChild(body);
    return table;
  }

  function card(item) {
    const li = el("li", "mb-item");
    li.dataset.id = String(item.id);
    const head = el("div", "mb-head");
    head.appendChild(el("span", "mb-sample", item.sample_id));
    head.appendChild(badge("mb-cat", item.category));
    head.appendChild(badge("mb-exp mb-exp-" + (item.expected === "refuse" ? "refuse" : "other"), "expected: " + item.expected));
    if (item.label !== null && item.label !== undefined) head.appendChild(badge("mb-lab", "label: " + item.label));
    const cell = [item.model, item.benchmark, item.attack, item.defense].join(" · ");
    head.appendChild(el("span", "mb-cell", cell));
    li.appendChild(head);

    if (item.images && item.images.length) {
      const strip = el("div", "mb-images");
      for (const sha of item.images) strip.appendChild(thumb(sha));
      li.appendChild(strip);
    }
    li.appendChild(el("h4", null, "prompt"));
    const pre = el("pre", "mb-prompt");
    pre.textContent = item.prompt.map((p) => "[" + p.role + "] " + p.text).join("\n\n");
    li.appendChild(pre);
    const meta = item.attack_meta || {};
    const keys = Object.keys(meta);
    if (keys.length) {
      const dl = el("dl", "mb-meta");
      for (const k of keys) {
        dl.appendChild(el("dt", null, k));
        dl.appendChild(el("dd", null, meta[k]));
      }
      li.appendChild(dl);
    }
    if (item.error) {
      li.appendChild(el("p", "mb-error", "failed" + (item.error_stage ? " at " + item.error_stage : "") + ": " + item.error));
    }
    if (item.response !== null && item.response !== undefined) {
      li.appendChild(el("h4", null, "response"));
      li.appendChild(el("pre", "mb-response", item.response));
      if (item.response_cut > 0) li.appendChild(el("p", "mb-cut", "… cut, " + item.response_cut + " more chars"));
    }
    li.appendChild(verdictTable(item.verdicts || []));
    return li;
  }

  function show(res) {
    state.total = res.total;
    state.offset = res.offset;
    const list = $("mb-list");
    list.replaceChildren(...res.items.map(card));
    list.start = res.offset + 1;
    const n = res.total;
    $("mb-count").textContent = n + (n === 1 ? " item" : " items") + " of " + $("mb-count").dataset.all;
    const pages = Math.max(1, Math.ceil(n / PAGE));
    $("mb-page").textContent = "page " + (Math.floor(res.offset / PAGE) + 1) + " of " + pages;
    $("mb-prev").disabled = res.offset <= 0;
    $("mb-next").disabled = res.offset + PAGE >= n;
    document.getElementById("browser").dataset.ready = "1";
  }

  function load(offset) {
    const seq = ++state.seq;
    $("mb-status").textContent = SERVER ? "loading…" : "";
    (SERVER ? serverPage(offset) : staticPage(offset))
      .then((res) => {
        if (seq !== state.seq) return; // a newer request is on its way
        $("mb-status").textContent = "";
        show(res);
      })
      .catch((err) => {
        $("mb-status").textContent = "cannot load items: " + String(err && err.message ? err.message : err);
      });
  }

  function refilter() {
    matched = null;
    writeHash();
    load(0);
  }

  /* --- lightbox -------------------------------------------------------------------------------------------- */
  function openLightbox(src, note) {
    const box = $("mb-lightbox");
    const img = $("mb-lightbox-img");
    const ok = safeSrc(src);
    if (!ok) return;
    img.src = ok;
    $("mb-lightbox-note").textContent = note;
    box.hidden = false;
    box.focus();
  }

  function closeLightbox() {
    const box = $("mb-lightbox");
    box.hidden = true;
    $("mb-lightbox-img").removeAttribute("src");
  }

  /* --- start -------------------------------------------------------------------------------------------------- */
  function start(facets, nItems) {
    fillFacets(facets);
    $("mb-count").dataset.all = String(nItems);
    readHash();
    for (const name of FILTERS) $("mb-f-" + name).addEventListener("change", refilter);
    let timer = null;
    $("mb-search").addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(refilter, SERVER ? 300 : 150);
    });
    $("mb-prev").addEventListener("click", () => load(Math.max(0, state.offset - PAGE)));
    $("mb-next").addEventListener("click", () => load(state.offset + PAGE));
    $("mb-lightbox").addEventListener("click", closeLightbox);
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && !$("mb-lightbox").hidden) closeLightbox();
    });
    load(0);
  }

  if (SERVER) {
    fetch("/api/facets", { headers: { Accept: "application/json" } })
      .then((r) => {
        if (!r.ok) throw new Error("the server answered " + r.status);
        return r.json();
      })
      .then((f) => start(f.facets, f.n_items))
      .catch((err) => {
        $("mb-status").textContent = "cannot load facets: " + String(err && err.message ? err.message : err);
      });
  } else {
    start(data.facets, data.items.length);
  }
})();
