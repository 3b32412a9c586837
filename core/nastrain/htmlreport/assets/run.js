// The report of a one-shot search (nastrain.htmlreport.run collects its data from the run
// record, run.jsonl). Sections: the run, the architecture it would export (final and how it
// changed over the epochs), the cells as diagrams (SVG drawn in Python), loss and metric
// curves (a <select> of metric key), a probability heat-map per label (x: epoch, y:
// candidate) and the entropy of each label's distribution over the epochs.
"use strict";

NASTRAIN.run((data) => {
  // own(obj, key): a record's labels, candidates and metric keys are anyone's names, and
  // "constructor" or "__proto__" must read the record's own entry, never a prototype's.
  const { el, section, chart, table, card, facts, fmt, esc, own, duration } = NASTRAIN;
  const header = data.header;
  const epochs = data.epochs;
  const xs = epochs.map((e) => e.epoch);
  const choices = header.choices || [];
  const valueText = (v) => (v === null || v === undefined ? "–" : typeof v === "string" ? v : JSON.stringify(v));
  const when = (t) => (typeof t === "number" ? new Date(t * 1000).toISOString().replace(".000Z", "Z") : "–");

  // --- header -------------------------------------------------------------------------------
  const statusText = own({
    running: "running, or stopped without an end line (killed)",
    completed: "completed", failed: "failed", interrupted: "interrupted",
  }, data.status) || data.status;
  document.getElementById("subtitle").textContent =
    `${header.trainer} · ${epochs.length}${header.num_epochs ? `/${header.num_epochs}` : ""} epochs · ` +
    `${statusText} · started ${header.started || when(header.time)}`;

  if (data.notes && data.notes.length) {
    const notes = section("notes", "Notes on the record");
    for (const note of data.notes) notes.append(el("p", { class: "note" }, note));
  }

  // --- the run ------------------------------------------------------------------------------
  const top = section("run", "Run");
  const cards = el("div", { class: "cards" });
  top.append(cards);
  const runCard = card(cards, "Search");
  const last = epochs.length ? epochs[epochs.length - 1] : null;
  const ended = data.end ? data.end.time : last ? last.time : null;
  facts(runCard, [
    ["trainer", `${header.trainer} (${header.trainer_class})`],
    ["status", statusText],
    ["epochs", `${epochs.length}${header.num_epochs ? ` of ${header.num_epochs}` : ""}`],
    ["started", header.started || when(header.time)],
    [data.end ? "ended" : "last epoch", when(ended)],
    ["wall time", typeof ended === "number" && typeof header.time === "number" ? duration(ended - header.time) : null],
    ["device", header.device],
    ["batch size", header.batch_size],
    ["record", data.source],
    ["nastrain", header.nastrain_version],
  ]);
  if (data.end && data.end.error) runCard.append(el("p", { class: "note", id: "run-error" }, `stopped by ${data.end.error}`));
  const optionsCard = card(cards, "Options");
  facts(optionsCard, Object.entries(header.options || {}));
  const spaceCard = card(cards, `Search space: ${choices.length} decisions`);
  spaceCard.id = "space";
  const decisions = choices.map((c) => [c.label, c.kind === "layer" ? c.candidates.join(", ") : `${c.n_chosen} of inputs ${c.candidates.join(", ")}`]);
  if (decisions.length > 12) {
    const more = el("details", {}, el("summary", {}, "every decision and its candidates"));
    spaceCard.append(more);
    facts(more, decisions);
  } else {
    facts(spaceCard, decisions);
  }

  if (!epochs.length) {
    top.append(el("p", { class: "empty", id: "no-epochs" }, "No epoch has finished yet: the record holds only its header."));
    return;
  }

  // --- the architecture ---------------------------------------------------------------------
  const archBody = section("architecture", "Architecture",
    "What the trainer would export after each epoch, derived cheaply (see the trainer's current_architecture).");
  const finalEntry = [...epochs].reverse().find((e) => e.architecture);
  if (!finalEntry) {
    archBody.append(el("p", { class: "empty", id: "no-architecture" },
      `${header.trainer} prefers no architecture during the search; only its export() chooses one.`));
  } else {
    const archCards = el("div", { class: "cards" });
    archBody.append(archCards);
    const finalCard = card(archCards, `Final architecture (after epoch ${finalEntry.epoch})`);
    finalCard.id = "final-architecture";
    const rows = choices.map((c) => {
      const value = own(finalEntry.architecture, c.label);
      const p = own(finalEntry.probabilities, c.label);
      let share = null;
      if (Array.isArray(p)) {
        const picked = c.kind === "layer" ? [c.candidates.indexOf(value)] : (Array.isArray(value) ? value : []).map(Number);
        share = picked.reduce((sum, i) => sum + (i >= 0 && i < p.length ? p[i] : 0), 0);
      }
      return { label: c.label, value: valueText(value), probability: share };
    });
    table(finalCard, [
      { key: "label", label: "label" },
      { key: "value", label: "chosen" },
      { key: "probability", label: "probability", numeric: true },
    ], rows, { id: "final-arch-table", filter: rows.length > 12 });
    // How it changed: every epoch where a label's value differs from the epoch before.
    const changes = [];
    for (let i = 1; i < epochs.length; i++) {
      const before = epochs[i - 1].architecture, now = epochs[i].architecture;
      if (!before || !now) continue;
      for (const c of choices) {
        const a = valueText(own(before, c.label)), b = valueText(own(now, c.label));
        if (a !== b) changes.push({ epoch: epochs[i].epoch, label: c.label, from: a, to: b });
      }
    }
    const changeCard = card(archCards, `How it changed: ${changes.length} change${changes.length === 1 ? "" : "s"}`);
    changeCard.id = "architecture-changes";
    if (changes.length) {
      table(changeCard, [
        { key: "epoch", label: "epoch", numeric: true },
        { key: "label", label: "label" },
        { key: "from", label: "from" },
        { key: "to", label: "to" },
      ], changes, { id: "changes-table" });
    } else {
      changeCard.append(el("p", { class: "note" }, `the same architecture after every epoch since epoch ${epochs[0].epoch}`));
    }
  }

  // --- the cells ----------------------------------------------------------------------------
  if (data.diagrams && data.diagrams.length) {
    const diagramBody = section("diagrams", "Cells",
      "The derived cells as diagrams; `nastrain report` writes each final cell beside the page as Graphviz text (<page>.<cell>.dot).");
    const holder = el("div", { class: "cards", id: "cell-diagrams" });
    const svgNode = (text) => {
      const doc = new DOMParser().parseFromString(text, "image/svg+xml");
      if (doc.getElementsByTagName("parsererror").length) throw new Error("a cell diagram is not valid SVG");
      return document.importNode(doc.documentElement, true);
    };
    const drawDiagram = (diagram) => {
      holder.replaceChildren();
      for (const cell of diagram.cells) {
        const box = el("div", { class: "card diagram", "data-cell": cell.name }, el("h3", {}, `${cell.name} cell`));
        box.append(svgNode(cell.svg));
        holder.append(box);
      }
    };
    const byEpoch = new Map();
    data.diagrams.forEach((d) => d.epochs.forEach((e) => byEpoch.set(e, d)));
    const withDiagram = xs.filter((e) => byEpoch.has(e));
    if (withDiagram.length > 1) {
      const select = el("select", { id: "diagram-epoch", "aria-label": "epoch of the cells" },
        withDiagram.map((e) => el("option", { value: e, selected: e === withDiagram[withDiagram.length - 1] }, `after epoch ${e}`)));
      select.addEventListener("change", () => drawDiagram(byEpoch.get(Number(select.value))));
      diagramBody.append(el("div", { class: "controls" }, el("label", {}, "cells "), select,
        el("span", { class: "note" }, `${data.diagrams.length} distinct over ${withDiagram.length} epochs`)));
    }
    diagramBody.append(holder);
    drawDiagram(byEpoch.get(withDiagram[withDiagram.length - 1]));
    const dots = Object.entries(data.dot || {});
    if (dots.length) {
      diagramBody.append(el("details", {}, el("summary", {}, "Graphviz text of the final cells"),
        dots.map(([name, text]) => el("pre", { "data-cell": name }, text))));
    }
  }

  // --- losses and metrics -------------------------------------------------------------------
  const keys = [...new Set(epochs.flatMap((e) => Object.keys(e.metrics || {})))];
  if (keys.length) {
    const metricBody = section("metrics", "Losses and metrics", "The epoch's mean of each step metric.");
    const select = el("select", { id: "metric-key", "aria-label": "metric key" },
      keys.map((k) => el("option", { value: k, selected: k === "loss" }, k)));
    metricBody.append(el("div", { class: "controls" }, el("label", {}, "metric "), select));
    const metricChart = chart(metricBody, {}, { id: "metric-chart", height: 300 });
    const draw = () => {
      const key = select.value;
      metricChart.setOption({
        tooltip: { trigger: "axis" },
        grid: { left: 70, right: 30, top: 20, bottom: 45 },
        xAxis: { type: "value", name: "epoch", nameLocation: "middle", nameGap: 28, minInterval: 1 },
        yAxis: { type: "value", name: key, scale: true },
        series: [{ type: "line", name: key, showSymbol: epochs.length < 60,
          data: epochs.map((e) => [e.epoch, own(e.metrics, key) !== undefined ? own(e.metrics, key) : null]) }],
      }, true);
    };
    select.addEventListener("change", draw);
    draw();
  }

  // --- probabilities: a heat-map per label --------------------------------------------------
  const probsOf = (e, c) => {
    const p = own(e.probabilities, c.label);
    return Array.isArray(p) ? p : [];
  };
  const withProbs = choices.filter((c) => epochs.some((e) => probsOf(e, c).length > 0));
  if (withProbs.length) {
    const probBody = section("probabilities", "Architecture probabilities",
      "Per label, what the search believes of each candidate after each epoch (the trainer's architecture_probabilities: DARTS' softmax of alpha, ENAS' controller, uniform sampling's distribution).");
    // One colour scale for every label (comparable), from the smallest probability seen to
    // the largest: early in a search every candidate sits near uniform, and a scale from 0
    // would paint them all alike.
    let top = 0, low = 1;
    for (const e of epochs) for (const c of withProbs) for (const v of probsOf(e, c)) {
      if (v > top) top = v;
      if (v < low) low = v;
    }
    top = Math.min(1, top > 0 ? top : 1);
    low = Math.min(low, top);
    if (top - low < 1e-9) low = 0;
    probBody.append(el("p", { class: "note" }, `Colours from ${fmt(low)} to ${fmt(top)}, the smallest and largest probability of the run.`));
    const grid = el("div", { class: "grid" });
    probBody.append(grid);
    for (const c of withProbs) {
      const cells = [];
      epochs.forEach((e, xi) => {
        probsOf(e, c).forEach((v, yi) => cells.push([xi, yi, v]));
      });
      const box = el("div", { class: "heatmap", "data-label": c.label }, el("h3", {}, c.label));
      grid.append(box);
      chart(box, {
        tooltip: { formatter: (p) => `${esc(c.label)}<br>epoch ${esc(xs[p.value[0]])}: ${esc(c.candidates[p.value[1]])} ${esc(fmt(p.value[2]))}` },
        grid: { left: 110, right: 70, top: 8, bottom: 36 },
        xAxis: { type: "category", data: xs, name: "epoch", nameLocation: "middle", nameGap: 24 },
        yAxis: { type: "category", data: c.candidates },
        visualMap: { min: low, max: top, calculable: false, text: [fmt(top), fmt(low)], orient: "vertical", right: 0, top: "middle", itemHeight: 80,
          inRange: { color: ["#f4f6f9", "#9ec1f5", "#2f6fdb", "#173a7a"] } },
        series: [{ type: "heatmap", name: c.label, data: cells }],
      }, { height: 60 + 24 * c.candidates.length });
    }
  }

  // --- entropy ------------------------------------------------------------------------------
  const withEntropy = choices.filter((c) => epochs.some((e) => typeof own(e.entropy, c.label) === "number"));
  if (withEntropy.length) {
    const entropyBody = section("entropy", "Entropy",
      "Per label, the entropy (nats) of its distribution: it falls as the search commits to a candidate.");
    chart(entropyBody, {
      tooltip: { trigger: "axis" },
      legend: { type: "scroll", top: 0 },
      grid: { left: 60, right: 30, top: 40, bottom: 45 },
      xAxis: { type: "value", name: "epoch", nameLocation: "middle", nameGap: 28, minInterval: 1 },
      yAxis: { type: "value", name: "nats", min: 0 },
      series: withEntropy.map((c) => ({
        type: "line", name: c.label, showSymbol: epochs.length < 60,
        data: epochs.map((e) => [e.epoch, typeof own(e.entropy, c.label) === "number" ? own(e.entropy, c.label) : null]),
      })),
    }, { id: "entropy-chart", height: 340 });
  }
});
