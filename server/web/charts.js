// SVG charts for the dashboard (no library): the score curve of one thread.
"use strict";

const Charts = (() => {
  const W = 760, H = 270, M = { left: 56, right: 12, top: 24, bottom: 38 };

  // About five round tick values covering [lo, hi].
  function ticks(lo, hi, count = 5) {
    if (!(hi > lo)) { hi = lo + 1; }
    const raw = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((f) => f * mag).find((s) => s >= raw);
    const out = [];
    for (let v = Math.floor(lo / step) * step; v < hi + step * (1 - 1e-9); v += step) out.push(+v.toFixed(10));
    return out;
  }

  // Every tick with the decimals its step needs (0.5 steps: "1.5, 1.0, 0.5"), so the axis reads evenly.
  const tickFormat = (values) => {
    const step = values.length > 1 ? values[1] - values[0] : 1;
    const decimals = Math.max(0, Math.ceil(-Math.log10(step) - 1e-9));
    return (v) => v.toFixed(decimals);
  };
  const escape = (s) => s.replace(/[&<>]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" }[c]));
  const finite = (v) => typeof v === "number" && Number.isFinite(v);
  // Each line's colour, width and dash pattern, for the chart and its legend alike: the reference line differs
  // from the mean by its dashes too, not by hue alone, and from the max by their pattern.
  const LINES = {
    mean: { label: "generation mean ± SEM", stroke: "var(--mean)", width: 2, dash: "" },
    max: { label: "generation max", stroke: "var(--max)", width: 1.2, dash: "4 3" },
    ref: { label: "reference mean ± SEM", stroke: "var(--ref)", width: 1.5, dash: "9 3 2 3" },
  };
  const stroke = (line) => `class="${line}" fill="none" stroke="${LINES[line].stroke}" stroke-width="${LINES[line].width}"${
    LINES[line].dash ? ` stroke-dasharray="${LINES[line].dash}"` : ""}`;

  // Polyline path of the points where value(p) is finite (gaps, and a change of part(generation), split it).
  function path(points, x, y, value, part) {
    let d = "", pen = "M", last = null;
    for (const p of points) {
      const v = value(p);
      if (!finite(v)) { pen = "M"; continue; }
      if (part(p.generation) !== last) { pen = "M"; last = part(p.generation); }
      d += `${pen}${x(p.generation).toFixed(1)},${y(v).toFixed(1)}`;
      pen = "L";
    }
    return d;
  }

  // Closed band between lower(p) and upper(p), one polygon per run of finite points in one part(generation).
  function band(points, x, y, lower, upper, part) {
    const runs = [[]];
    for (const p of points) {
      const run = runs[runs.length - 1];
      if (run.length && part(run[0].generation) !== part(p.generation)) runs.push([]);
      if (finite(lower(p)) && finite(upper(p))) runs[runs.length - 1].push(p);
      else if (runs[runs.length - 1].length) runs.push([]);
    }
    return runs.filter((r) => r.length).map((r) => {
      const top = r.map((p) => `${x(p.generation).toFixed(1)},${y(upper(p)).toFixed(1)}`);
      const bottom = r.slice().reverse().map((p) => `${x(p.generation).toFixed(1)},${y(lower(p)).toFixed(1)}`);
      return "M" + top.concat(bottom).join("L") + "Z";
    }).join("");
  }

  // Score curve: generation mean ± SEM, max, reference mean ± SEM; `label` says what the y values are
  // (the thread's `score_label`: spikes/s for channels, the expression otherwise), above the y axis.
  // After a retarget (more than one of the curve's `segments`), a marker at each objective's first
  // generation says what the scores from there on are, and the axis label points to the markers.
  function scoreCurve(points, { label = "score", segments = [], total = points.length } = {}) {
    const values = [];
    for (const p of points) {
      for (const v of [p.max, p.mean, p.reference_mean]) if (finite(v)) values.push(v);
      if (finite(p.mean) && finite(p.sem)) values.push(p.mean - p.sem, p.mean + p.sem);
      if (finite(p.reference_mean) && finite(p.reference_sem)) values.push(p.reference_mean - p.reference_sem);
    }
    const lo = values.length ? Math.min(0, ...values) : 0, hi = values.length ? Math.max(...values) : 1;
    const yt = ticks(lo, hi), y0 = yt[0], y1 = yt[yt.length - 1], fmt = tickFormat(yt);
    const gmax = points.length ? Math.max(1, points[points.length - 1].generation) : 1;
    const xt = ticks(0, gmax, 8).filter((g) => Number.isInteger(g) && g <= gmax);
    const x = (g) => M.left + (g / gmax) * (W - M.left - M.right);
    const y = (v) => H - M.bottom - ((v - y0) / (y1 - y0 || 1)) * (H - M.top - M.bottom);
    // Which objective scored generation g: scores in different units are not joined.
    const part = (g) => segments.filter((s) => s.from_generation <= g).length;
    if (segments.length > 1) {
      label = `score (objective changed at generation ${segments.slice(1).map((s) => s.from_generation).join(", ")}: see markers)`;
    }
    const parts = [`<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="score curve" data-points="${points.length}" data-total="${total}">`];
    for (const t of yt) parts.push(`<line class="grid" x1="${M.left}" x2="${W - M.right}" y1="${y(t)}" y2="${y(t)}"/>`,
      `<text x="${M.left - 6}" y="${y(t) + 4}" text-anchor="end">${fmt(t)}</text>`);
    for (const t of xt) parts.push(`<text x="${x(t)}" y="${H - M.bottom + 15}" text-anchor="middle">${t}</text>`);
    parts.push(`<line class="axis" x1="${M.left}" x2="${W - M.right}" y1="${H - M.bottom}" y2="${H - M.bottom}"/>`,
      `<line class="axis" x1="${M.left}" x2="${M.left}" y1="${M.top}" y2="${H - M.bottom}"/>`,
      `<text class="label" x="${(M.left + W - M.right) / 2}" y="${H - 4}" text-anchor="middle">generation</text>`,
      `<text class="label y-label" x="4" y="${M.top - 10}">${escape(label)}</text>`,
      ...(segments.length > 1 ? segments.map((s, i) => `<line class="segment" x1="${x(s.from_generation)}" x2="${x(s.from_generation)}"
        y1="${M.top}" y2="${H - M.bottom}"/><text class="segment-label" x="${x(s.from_generation) + 4}" y="${M.top + 12 + 12 * (i % 2)}">${escape(s.score_label)}</text>`) : []),
      `<path d="${band(points, x, y, (p) => p.reference_mean - p.reference_sem, (p) => p.reference_mean + p.reference_sem, part)}" fill="var(--ref)" fill-opacity=".18"/>`,
      `<path d="${band(points, x, y, (p) => p.mean - p.sem, (p) => p.mean + p.sem, part)}" fill="var(--mean)" fill-opacity=".22"/>`,
      `<path d="${path(points, x, y, (p) => p.reference_mean, part)}" ${stroke("ref")}/>`,
      `<path d="${path(points, x, y, (p) => p.max, part)}" ${stroke("max")}/>`,
      `<path d="${path(points, x, y, (p) => p.mean, part)}" ${stroke("mean")}/>`,
      "</svg>");
    return parts.join("");
  }

  // Each swatch is its line drawn short, dashes and all.
  const legend = `<div class="legend">${Object.keys(LINES).map((line) => `<span><svg viewBox="0 0 24 8" aria-hidden="true">
    <line x1="0" x2="24" y1="4" y2="4" ${stroke(line)}/></svg>${LINES[line].label}</span>`).join("")}</div>`;

  return { scoreCurve, legend, ticks };
})();
