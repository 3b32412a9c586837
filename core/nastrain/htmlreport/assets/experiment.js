// The report of a multi-trial experiment (nastrain.htmlreport.experiment collects its data).
// Sections: the experiment (best architecture, configuration, search space), the
// optimization history, intermediate curves, the trial table, per-choice distributions,
// parallel coordinates over the choices and a timeline of trials per worker. "Best"
// follows the experiment's mode ("max": larger is better, "min": smaller).
"use strict";

NASTRAIN.run((data) => {
  const { el, section, chart, table, card, facts, fmt, esc, duration, own } = NASTRAIN;
  const trials = data.trials;
  const mode = data.experiment.mode;
  const better = (a, b) => (mode === "min" ? a < b : a > b);
  const betterWord = mode === "min" ? "smaller" : "larger";
  const STATUS_COLORS = {
    succeeded: "#2e9d57", failed: "#d64541", early_stopped: "#e8a33d",
    interrupted: "#8a8f98", running: "#2f6fdb",
  };
  const statusColor = (s) => own(STATUS_COLORS, s) || "#555";
  const archText = (arch) => Object.entries(arch).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ");
  const firstLine = (text) => (text ? String(text).split("\n")[0] : null);

  // --- the intermediate results: float64 columns in base64 (one per metric key) ----------
  const inter = data.intermediate;
  const columnCache = {};
  function column(key) {
    if (!Object.hasOwn(columnCache, key)) {
      const binary = atob(inter.columns[key]);
      const view = new DataView(new ArrayBuffer(binary.length));
      for (let i = 0; i < binary.length; i++) view.setUint8(i, binary.charCodeAt(i));
      const values = new Array(inter.count);
      for (let i = 0; i < inter.count; i++) {
        const v = view.getFloat64(i * 8, true);
        values[i] = Number.isNaN(v) ? null : v; // NaN: this result has no such key
      }
      columnCache[key] = values;
    }
    return columnCache[key];
  }
  // The curve of the i-th trial for one key: its values, null where a result lacks the key.
  const curve = (i, key) => column(key).slice(inter.offsets[i], inter.offsets[i + 1]);
  // For tests and the curious: the decoded curves, per trial (in the order of data.trials).
  window.NASTRAIN_EXPERIMENT = { curves: (key) => trials.map((_, i) => curve(i, key)) };

  // --- header -------------------------------------------------------------------------------
  const counts = Object.entries(data.counts).map(([s, n]) => `${n} ${s}`).join(", ");
  const exp = data.experiment;
  document.getElementById("subtitle").textContent =
    `${trials.length} trials${counts ? ` (${counts})` : ""} · strategy ${exp.strategy.name} · trainer ` +
    `${exp.trainer.name} · ${betterWord} is better · ` +
    (data.ended ? "not running" : `running (${data.writer})`) + ` · written ${data.generated_at}`;

  // --- the experiment ---------------------------------------------------------------------
  const top = section("experiment", "Experiment");
  const cards = el("div", { class: "cards" });
  top.append(cards);
  if (data.best) {
    const best = card(cards, `Best architecture: trial ${data.best.index}`);
    best.id = "best";
    facts(best, [["value", data.best.value], ...Object.entries(data.best.arch)]);
    if (data.best.final && typeof data.best.final === "object") {
      best.append(el("h3", {}, "final metrics"));
      facts(best, Object.entries(data.best.final));
    }
  } else {
    const none = card(cards, "Best architecture");
    none.id = "best";
    none.append(el("p", { class: "note" }, trials.length ? "no trial has succeeded yet" : "no trials yet"));
  }
  const config = card(cards, "Configuration");
  facts(config, [
    ["store", data.store],
    ["space", exp.space_name],
    ["trainer", exp.trainer.name],
    ["trainer kwargs", exp.trainer.kwargs],
    ["strategy", exp.strategy.name],
    ["strategy kwargs", exp.strategy.kwargs],
    ["seed", exp.seed],
    ["mode", `${mode} (${betterWord} is better)`],
    ["max_trials", exp.max_trials],
    ["concurrency", exp.concurrency],
    ["executor", exp.executor],
    ["status", data.ended ? "no process is running it" : `running: ${data.writer}`],
  ]);
  // Each label's candidates: a layer choice's names; an input choice's input combinations
  // (or, when there are many, the single inputs a trial may choose among others).
  function candidates(choice) {
    if (choice.kind === "layer") return choice.names.map(String);
    if (choice.size <= 12) {
      const out = [];
      const pick = (start, chosen) => {
        if (chosen.length === choice.n_chosen) { out.push(JSON.stringify(chosen)); return; }
        for (let i = start; i < choice.n_candidates; i++) pick(i + 1, [...chosen, i]);
      };
      pick(0, []);
      return out;
    }
    return Array.from({ length: choice.n_candidates }, (_, i) => `input ${i}`);
  }
  // Which of candidates(choice) an architecture's value counts for (several for inputs).
  function chosen(choice, value) {
    if (choice.kind === "layer") return [String(value)];
    if (choice.size <= 12) return [JSON.stringify(value)];
    return (value || []).map((i) => `input ${i}`);
  }
  const space = card(cards, `Search space (${data.space.length} labels)`);
  space.id = "space";
  facts(space, data.space.map((c) => [
    c.label,
    c.kind === "layer" ? c.names.join(", ") : `${c.n_chosen} of ${c.n_candidates} inputs (${c.size} ways)`,
  ]));

  if (!trials.length) {
    top.append(el("p", { class: "empty", id: "no-trials" },
      "This experiment has no trials yet: nothing to plot. Run it (nastrain run), then write this report again."));
    return;
  }

  // --- optimization history ---------------------------------------------------------------
  const scored = trials.filter((t) => t.status === "succeeded" && t.value !== null);
  const t0 = Math.min(...trials.map((t) => t.started).filter((s) => s !== null), data.generated);
  const historyBody = section("history", "Optimization history",
    `The final value of each succeeded trial and the best so far (${betterWord} is better), against the trial index or the wall time its trial ended.`);
  const historyAxis = el("select", { id: "history-axis", "aria-label": "history x axis" },
    el("option", { value: "index" }, "trial index"), el("option", { value: "time" }, "wall time"));
  historyBody.append(el("div", { class: "controls" }, el("label", {}, "x axis: ", historyAxis)));
  const history = chart(historyBody, {}, { id: "history-chart", height: 320 });
  function drawHistory() {
    const byTime = historyAxis.value === "time";
    const ordered = byTime
      ? [...scored].sort((a, b) => a.ended - b.ended)
      : [...scored].sort((a, b) => a.index - b.index);
    const x = (t) => (byTime ? t.ended - t0 : t.index);
    let best = null;
    const bestLine = [];
    for (const t of ordered) {
      if (best === null || better(t.value, best)) best = t.value;
      bestLine.push([x(t), best, t.index]);
    }
    history.setOption({
      animation: false, // notMerge drops what chart() set
      tooltip: { trigger: "item", formatter: (p) => `trial ${esc(p.data[2])}<br>${esc(p.seriesName)}: ${esc(fmt(p.data[1]))}` },
      legend: { top: 0 },
      grid: { left: 60, right: 20, top: 30, bottom: 40 },
      xAxis: {
        type: "value", name: byTime ? "seconds since the first trial started" : "trial", nameLocation: "middle", nameGap: 26,
        axisLabel: byTime ? { formatter: (v) => duration(v) } : {}, min: "dataMin", max: "dataMax",
      },
      yAxis: { type: "value", scale: true, name: "value" },
      series: [
        {
          name: "trial", type: "scatter", symbolSize: 6, data: ordered.map((t) => [x(t), t.value, t.index]),
          itemStyle: { color: "#7a8bb0" }, large: true, largeThreshold: 500,
        },
        { name: "best so far", type: "line", step: "end", showSymbol: false, data: bestLine, lineStyle: { width: 2, color: "#d64541" }, itemStyle: { color: "#d64541" } },
      ],
    }, { notMerge: true });
  }
  historyAxis.addEventListener("change", drawHistory);
  drawHistory();

  // --- intermediate curves ------------------------------------------------------------------
  if (inter.count > 0) {
    const TOP = 20;
    const curvesBody = section("curves", "Intermediate curves",
      `Each trial's intermediate results, step by step. With many trials, the ${TOP} best are drawn (coloured); "all trials" adds every other one in grey.`);
    const keySelect = el("select", { id: "curve-metric", "aria-label": "metric key" },
      inter.keys.map((k) => el("option", { value: k }, k)));
    const everyone = trials.map((_, i) => i);
    const ranked = [...everyone].sort((a, b) => (trials[a].rank ?? Infinity) - (trials[b].rank ?? Infinity) || a - b);
    const many = trials.length > 50;
    const allBox = el("input", { type: "checkbox", id: "curve-all", checked: !many });
    curvesBody.append(el("div", { class: "controls" },
      el("label", {}, "metric: ", keySelect),
      el("label", {}, allBox, ` all ${trials.length} trials`)));
    const curves = chart(curvesBody, {}, { id: "curves-chart", height: 360 });
    function drawCurves() {
      const key = keySelect.value;
      const shown = many ? ranked.slice(0, TOP) : everyone;
      const series = shown.map((i) => ({
        name: `trial ${trials[i].index}`, type: "line", showSymbol: false, connectNulls: false,
        data: curve(i, key).map((v, step) => [step, v]),
      }));
      if (many && allBox.checked) {
        // Every other trial as one series, broken by nulls between trials: fast with thousands.
        const rest = [];
        const drawn = new Set(shown);
        for (const i of everyone) {
          if (drawn.has(i)) continue;
          curve(i, key).forEach((v, step) => rest.push([step, v]));
          rest.push([null, null]);
        }
        series.unshift({
          name: "other trials", type: "line", showSymbol: false, connectNulls: false, silent: true,
          data: rest, lineStyle: { color: "#b9c0cc", width: 1, opacity: 0.35 }, itemStyle: { color: "#b9c0cc" },
          z: 1,
        });
      }
      curves.setOption({
        animation: false, // notMerge drops what chart() set
        tooltip: { trigger: "item", formatter: (p) => `${esc(p.seriesName)}<br>step ${esc(p.data[0])}: ${esc(fmt(p.data[1]))}` },
        legend: { type: "scroll", top: 0 },
        grid: { left: 60, right: 20, top: 34, bottom: 40 },
        xAxis: { type: "value", name: "step", nameLocation: "middle", nameGap: 26, min: 0, minInterval: 1 },
        yAxis: { type: "value", scale: true, name: key },
        series,
      }, { notMerge: true });
    }
    keySelect.addEventListener("change", drawCurves);
    allBox.addEventListener("change", drawCurves);
    drawCurves();
  }

  // --- the trial table -----------------------------------------------------------------------
  const tableBody = section("table", "Trials",
    "Click a header to sort (again: the other way); the box filters rows; sorting and filtering take every trial, of which the first 200 are drawn until \"draw all\" is clicked. Succeeded trials are ranked by their final value.");
  table(tableBody, [
    { key: "rank", label: "rank", numeric: true },
    { key: "index", label: "trial", numeric: true },
    { key: "status", label: "status" },
    { key: "value", label: "value", numeric: true },
    { key: "reason", label: "reason", format: (v) => firstLine(v) || "", title: (row) => row.reason },
    { key: "seed", label: "seed", numeric: true },
    { key: "seconds", label: "duration", numeric: true, format: (v) => duration(v) },
    { key: "attempts", label: "attempts", numeric: true },
    { key: "worker", label: "worker", format: (v) => v ?? "–" },
    { key: "archText", label: "architecture" },
  ], trials.map((t) => ({ ...t, archText: archText(t.arch) })), { id: "trials", initialSort: { key: "rank", dir: 1 }, limit: 200 });

  // --- per-choice distributions ------------------------------------------------------------
  // Drawn as small SVG box plots of our own (one per label): cheap with many labels.
  if (scored.length) {
    const dotted = scored.length <= 300; // beyond, the dots are a smear
    const distBody = section("choices", "Per-choice distributions",
      `For each label, the final values of the succeeded trials that chose each candidate (box: quartiles, median; whiskers: the extremes${dotted ? "; dots: trials" : ""}; hover for numbers). The candidate with the best median (${betterWord} is better) is named.`);
    const grid = el("div", { class: "grid" });
    distBody.append(grid);
    const quantile = (sorted, q) => {
      const pos = (sorted.length - 1) * q, lo = Math.floor(pos), hi = Math.ceil(pos);
      return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
    };
    const all = scored.map((t) => t.value);
    let lo = Math.min(...all), hi = Math.max(...all);
    if (lo === hi) { lo -= 0.5; hi += 0.5; }
    const pad = (hi - lo) * 0.05;
    lo -= pad; hi += pad;
    // A few round numbers for the value axis.
    const step = (() => {
      const raw = (hi - lo) / 4, power = 10 ** Math.floor(Math.log10(raw));
      return [1, 2, 2.5, 5, 10].map((m) => m * power).find((m) => m >= raw);
    })();
    const ticks = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) ticks.push(v);
    const NS = "http://www.w3.org/2000/svg";
    const svg = (tag, attrs, ...children) => {
      const node = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
      for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
      return node;
    };
    const W = 420, H = 230, left = 52, right = 10, top = 10, bottom = 46;
    const y = (v) => top + (H - top - bottom) * (1 - (v - lo) / (hi - lo));
    for (const choice of data.space) {
      const names = candidates(choice);
      const values = Object.fromEntries(names.map((n) => [n, []]));
      for (const t of scored) {
        for (const name of chosen(choice, own(t.arch, choice.label))) if (Object.hasOwn(values, name)) values[name].push(t.value);
      }
      const stats = names.map((n) => {
        const v = [...values[n]].sort((a, b) => a - b);
        return v.length ? { min: v[0], q1: quantile(v, 0.25), median: quantile(v, 0.5), q3: quantile(v, 0.75), max: v[v.length - 1], count: v.length } : null;
      });
      let bestAt = null;
      stats.forEach((st, i) => {
        if (st && (bestAt === null || better(st.median, stats[bestAt].median))) bestAt = i;
      });
      const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", class: "boxes", "data-label": choice.label, role: "img" });
      for (const v of ticks) {
        plot.append(
          svg("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), stroke: "#e6e9ef" }),
          svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#5b6475" }, fmt(v, 3)),
        );
      }
      const band = (W - left - right) / names.length;
      names.forEach((name, i) => {
        const cx = left + band * (i + 0.5), half = Math.min(band * 0.3, 28);
        const st = stats[i];
        const label = svg("text", {
          x: cx, y: H - bottom + 16, "text-anchor": names.length > 4 ? "end" : "middle", "font-size": 11, fill: "#1d2330",
          transform: names.length > 4 ? `rotate(-30 ${cx} ${H - bottom + 16})` : "",
        }, name);
        plot.append(label);
        if (!st) return;
        const g = svg("g", {
          class: "box", "data-candidate": name, "data-min": st.min, "data-q1": st.q1, "data-median": st.median,
          "data-q3": st.q3, "data-max": st.max, "data-count": st.count,
        }, svg("title", {}, `${choice.label} = ${name}: ${st.count} trials; min ${fmt(st.min)}, quartiles ${fmt(st.q1)} / ${fmt(st.median)} / ${fmt(st.q3)}, max ${fmt(st.max)}`));
        const color = i === bestAt ? "#d64541" : "#2f6fdb";
        g.append(
          svg("line", { x1: cx, x2: cx, y1: y(st.max), y2: y(st.q3), stroke: color }),
          svg("line", { x1: cx, x2: cx, y1: y(st.q1), y2: y(st.min), stroke: color }),
          svg("line", { x1: cx - half / 2, x2: cx + half / 2, y1: y(st.max), y2: y(st.max), stroke: color }),
          svg("line", { x1: cx - half / 2, x2: cx + half / 2, y1: y(st.min), y2: y(st.min), stroke: color }),
          svg("rect", { x: cx - half, width: 2 * half, y: y(st.q3), height: Math.max(1, y(st.q1) - y(st.q3)), fill: "#e8eefb", stroke: color }),
          svg("line", { x1: cx - half, x2: cx + half, y1: y(st.median), y2: y(st.median), stroke: color, "stroke-width": 2 }),
        );
        if (dotted) {
          values[name].forEach((v, j) => g.append(svg("circle", { cx: cx + (((j * 0.618) % 1) - 0.5) * half * 1.6, cy: y(v), r: 2, fill: "#d64541", "fill-opacity": 0.55 })));
        }
        plot.append(g);
      });
      grid.append(el("div", { class: "card" },
        el("h3", {}, choice.label, bestAt === null ? null : el("span", { class: "note" }, ` · best median: ${names[bestAt]}`)),
        plot));
    }
  }

  // --- parallel coordinates ---------------------------------------------------------------
  if (scored.length && data.space.length) {
    const LINES = 500; // drawn at once; all of them on request (thousands take a while)
    const best = [...scored].sort((a, b) => a.rank - b.rank);
    const parallelBody = section("parallel", "Parallel coordinates",
      `One line per succeeded trial through the candidate it chose for each label, coloured by its final value (darker is better: ${betterWord})` +
      (best.length > LINES ? `; the ${LINES} best, unless "all" is ticked.` : "."));
    const allLines = el("input", { type: "checkbox", id: "parallel-all" });
    if (best.length > LINES) {
      parallelBody.append(el("div", { class: "controls" }, el("label", {}, allLines, ` all ${best.length} succeeded trials`)));
    }
    // A trial's point on a label's axis: its candidate (or, for an input choice, its chosen
    // inputs together). Too many ways to list for an input choice: the ways trials chose.
    const point = (c, t) => chosen(c, own(t.arch, c.label)).join(", ");
    const axisData = (c) => (c.kind === "layer" || c.size <= 12
      ? candidates(c)
      : [...new Set(best.map((t) => point(c, t)))].sort());
    const axes = data.space.map((choice, i) => ({ dim: i, name: choice.label, type: "category", data: axisData(choice) }));
    axes.push({ dim: data.space.length, name: "value", type: "value", scale: true });
    const palette = ["#fde9c9", "#f4a259", "#d64541", "#6d1a36"];
    const parallel = chart(parallelBody, {}, { id: "parallel-chart", height: 380 });
    function drawParallel() {
      const shown = allLines.checked ? best : best.slice(0, LINES);
      // Worst first, so that the best lines are drawn on top.
      const rows = shown.map((t) => [...data.space.map((c) => point(c, t)), t.value]).reverse();
      const values = shown.map((t) => t.value); // the colours span the lines drawn
      const lo = Math.min(...values), hi = Math.max(...values);
      parallel.setOption({
        animation: false, // notMerge drops what chart() set
        parallelAxis: axes,
        parallel: { left: 60, right: 90, top: 40, bottom: 30 },
        visualMap: {
          type: "continuous", min: lo, max: hi === lo ? lo + 1 : hi, dimension: data.space.length, right: 0, top: "middle",
          calculable: true, precision: 3, text: ["value", ""], inRange: { color: mode === "min" ? [...palette].reverse() : palette },
        },
        series: [{ type: "parallel", lineStyle: { width: 1, opacity: 0.5 }, data: rows, progressive: 500 }],
      }, { notMerge: true });
    }
    allLines.addEventListener("change", drawParallel);
    drawParallel();
  }

  // --- timeline of trials per worker --------------------------------------------------------
  const placed = trials.filter((t) => t.started !== null);
  if (placed.length) {
    const workers = [...new Set(placed.map((t) => t.worker ?? "(not recorded)"))].sort();
    const timelineBody = section("timeline", "Timeline",
      "Each trial's latest attempt on the worker that ran it, from its start to its end (still running: to when this page was written), coloured by status.");
    // One "lines" series per status (large mode: thousands of trials draw at once); each
    // trial a thick segment from its start to its end on its worker's row.
    const statuses = [...new Set(placed.map((t) => t.status))];
    const ends = placed.map((t) => t.ended ?? data.generated);
    const series = statuses.map((status) => ({
      name: status, type: "lines", coordinateSystem: "cartesian2d", polyline: false, large: true, largeThreshold: 300,
      lineStyle: { color: statusColor(status), width: Math.max(4, Math.min(18, 300 / workers.length)), opacity: 0.9, cap: "butt" },
      data: placed.filter((t) => t.status === status).map((t) => {
        const row = workers.indexOf(t.worker ?? "(not recorded)");
        return { coords: [[t.started - t0, row], [Math.max((t.ended ?? data.generated) - t0, t.started - t0 + 1e-3), row]], trial: t.index };
      }),
    }));
    chart(timelineBody, {
      tooltip: { trigger: "item", formatter: (p) => (p.data && p.data.coords ? `trial ${esc(p.data.trial)} (${esc(p.seriesName)})<br>${esc(workers[p.data.coords[0][1]])}<br>${esc(duration(p.data.coords[0][0]))} → ${esc(duration(p.data.coords[1][0]))}` : esc(p.seriesName)) },
      legend: { top: 0 },
      grid: { left: 140, right: 20, top: 30, bottom: 40 },
      // Lines series do not set an axis's extent: both are given.
      xAxis: {
        type: "value", name: "seconds since the first trial started", nameLocation: "middle", nameGap: 26,
        axisLabel: { formatter: (v) => duration(v) }, min: 0, max: Math.max(...ends) - t0,
      },
      yAxis: { type: "category", data: workers, inverse: true },
      series,
    }, { id: "timeline-chart", height: Math.max(180, 70 + 28 * workers.length) });
  }
});
