// Helpers shared by every kind of nastrain report page (inlined after ECharts).
// The page's data: JSON in <script type="application/json" id="nastrain-data">.
"use strict";

const NASTRAIN = (() => {
  const data = () => JSON.parse(document.getElementById("nastrain-data").textContent);

  // An element with attributes and children (strings become text nodes: never HTML).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // A titled section appended to <main>; returns its body element.
  function section(id, title, note) {
    const body = el("div", { class: "section-body" });
    document.getElementById("report").append(
      el("section", { id }, el("h2", {}, title), note ? el("p", { class: "note" }, note) : null, body),
    );
    return body;
  }

  // An ECharts chart in a new box inside `parent`; resized with the window.
  const charts = [];
  function chart(parent, option, { height = 320, id } = {}) {
    const box = el("div", { class: "chart", id, style: `height:${height}px` });
    parent.append(box);
    const instance = echarts.init(box, null, { renderer: "canvas" });
    // No animation: a page (and its screenshot) shows its final state at once.
    instance.setOption({ animation: false, ...option });
    charts.push(instance);
    return instance;
  }
  window.addEventListener("resize", () => charts.forEach((c) => c.resize()));

  // Text made safe for HTML: ECharts renders a tooltip formatter's string as markup, and a
  // store or record may come from anyone.
  const esc = (value) => String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

  // obj[key] when obj has its own key, else undefined: keys come from a store or record
  // and may be names such as "constructor" that every object inherits.
  const own = (obj, key) => (obj !== null && typeof obj === "object" && Object.hasOwn(obj, key) ? obj[key] : undefined);

  // Seconds as "12.3 s", "4m 05s" or "2h 03m".
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    const m = Math.floor(seconds / 60), s = Math.round(seconds % 60);
    if (m < 60) return `${m}m ${String(s).padStart(2, "0")}s`;
    return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
  }

  function fmt(value, digits = 4) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "number") {
      if (Number.isInteger(value)) return String(value);
      return Math.abs(value) >= 1e5 || (value !== 0 && Math.abs(value) < 1e-3)
        ? value.toExponential(digits - 1)
        : value.toPrecision(digits).replace(/\.?0+$/, "");
    }
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  // A sortable, filterable table. columns: [{key, label, numeric, format}]; rows: objects.
  // Clicking a header sorts by it (again: the other way); the filter box keeps the rows
  // whose cells contain its text (case-insensitive). Missing values sort last.
  // `limit` (optional): draw only the first `limit` rows of the sorted, filtered ones, with
  // a button that draws them all (thousands of rows take long to lay out).
  function table(parent, columns, rows, { id, filter = true, initialSort, limit = Infinity } = {}) {
    let drawn = limit;
    const more = el("button", { type: "button", class: "more", hidden: true, onclick: () => { drawn = Infinity; draw(); } });
    const state = { key: initialSort ? initialSort.key : null, dir: initialSort ? initialSort.dir : 1, text: "" };
    const tbody = el("tbody");
    const headers = columns.map((c) =>
      el("th", { "data-key": c.key, class: c.numeric ? "num" : null, onclick: () => sortBy(c.key) }, c.label),
    );
    const count = el("span", { class: "count" });
    const box = el("input", {
      type: "search", placeholder: "filter rows…", "aria-label": "filter rows",
      oninput: (e) => { state.text = e.target.value.toLowerCase(); draw(); },
    });
    parent.append(
      filter ? el("div", { class: "table-tools" }, box, count) : null,
      el("div", { class: "table-wrap" }, el("table", { id, class: "data" }, el("thead", {}, el("tr", {}, headers)), tbody)),
      more,
    );
    const cellText = (c, row) => (c.format ? c.format(row[c.key], row) : fmt(row[c.key]));
    function sortBy(key) {
      state.dir = state.key === key ? -state.dir : 1;
      state.key = key;
      draw();
    }
    function compare(a, b) {
      const x = a[state.key], y = b[state.key];
      const missing = (v) => v === null || v === undefined;
      if (missing(x) || missing(y)) return missing(x) - missing(y);
      if (typeof x === "number" && typeof y === "number") return state.dir * (x - y);
      return state.dir * String(x).localeCompare(String(y), undefined, { numeric: true });
    }
    function draw() {
      let shown = rows;
      if (state.text) {
        shown = rows.filter((row) => columns.some((c) => cellText(c, row).toLowerCase().includes(state.text)));
      }
      if (state.key !== null) shown = [...shown].sort(compare);
      headers.forEach((h) => {
        const key = h.getAttribute("data-key");
        h.setAttribute("aria-sort", key === state.key ? (state.dir > 0 ? "ascending" : "descending") : "none");
      });
      const fragment = document.createDocumentFragment();
      const all = shown.length;
      if (all > drawn) shown = shown.slice(0, drawn);
      for (const row of shown) {
        fragment.append(el("tr", {}, columns.map((c) => el("td", { class: c.numeric ? "num" : null, title: c.title ? c.title(row) : null }, cellText(c, row)))));
      }
      tbody.replaceChildren(fragment);
      count.textContent = `${all} of ${rows.length} rows` + (shown.length < all ? ` (the first ${shown.length} drawn)` : "");
      more.hidden = shown.length === all;
      more.textContent = `draw all ${all} rows`;
    }
    draw();
    return { sortBy, draw };
  }

  function card(parent, title, ...content) {
    const node = el("div", { class: "card" }, el("h3", {}, title), ...content);
    parent.append(node);
    return node;
  }

  // A definition list of key -> value (objects shown as JSON).
  function facts(parent, entries) {
    const dl = el("dl", { class: "facts" });
    for (const [key, value] of entries) dl.append(el("dt", {}, key), el("dd", {}, fmt(value)));
    parent.append(dl);
    return dl;
  }

  // Run a page's drawing code: `draw(data)`. Whatever happens, the page says it is done
  // (document.body.dataset.ready = "yes", which the browser tests wait for); an error is
  // shown in the page and logged on the console (where the tests see it).
  function run(draw) {
    try {
      draw(data());
    } catch (error) {
      document.getElementById("report").prepend(el("p", { class: "empty" }, `This page could not be drawn: ${error}`));
      console.error(error);
    } finally {
      document.body.dataset.ready = "yes";
    }
  }

  return { data, el, section, chart, charts, duration, esc, fmt, own, table, card, facts, run };
})();
