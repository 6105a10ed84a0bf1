// One live uPlot line chart per publish label. The x axis is the logical timestamp of the data
// batches (not the wall clock); series are named from their metadata dimensions; detect()
// events are drawn as vertical markers on every chart.

import uPlot from "./uPlot.esm.js";

/** Distinct line colours, each at least 3:1 against white, none near the marker red and green. */
const PALETTE = ["#0b5cad", "#c2410c", "#7c3aed", "#0f766e", "#a16207", "#be185d", "#1e3a8a", "#a21caf", "#334155", "#9a3412"];
/** Timestamps kept per chart: a bounded window, so a long stream does not grow the page. */
const WINDOW = 1200;
const HEIGHT = 260;

/** "region=us-east-1, service=api" from a series' metadata, or its metric when it has no dimension. */
export function seriesName(tsId, props) {
  const keys = (props.sf_key || Object.keys(props)).filter((k) => !k.startsWith("sf_") && k !== "computationId");
  const dims = keys.filter((k) => props[k] != null).map((k) => `${k}=${props[k]}`);
  return dims.join(", ") || props.sf_originatingMetric || tsId;
}

export function seriesLabel(props) {
  return props.sf_streamLabel || "(no label)";
}

class Chart {
  constructor(parent, label, markers) {
    this.label = label;
    this.markers = markers;
    this.times = [];
    this.columns = [];
    this.index = new Map();
    this.figure = document.createElement("figure");
    this.figure.className = "chart";
    this.figure.dataset.label = label;
    const caption = document.createElement("figcaption");
    caption.textContent = label;
    this.figure.append(caption);
    parent.append(this.figure);
    this.plot = new uPlot(this.options(), [[]], this.figure);
    this.plot.root.setAttribute("role", "img");
    this.plot.root.setAttribute("aria-label", `Line chart of ${label}; the table below lists the latest values`);
  }

  options() {
    return {
      width: this.width(),
      height: HEIGHT,
      scales: { x: { time: true } },
      series: [{ label: "Time" }],
      axes: [{}, { size: 60 }],
      legend: { live: true },
      hooks: { draw: [(u) => this.drawMarkers(u)] },
    };
  }

  width() {
    return Math.max(300, (this.figure.parentElement?.clientWidth || 800) - 20);
  }

  /** Adds one logical timestamp's values (Map tsId → value) of this label's series. */
  add(t, values, names) {
    const last = this.times.length - 1;
    let row = last;
    if (last < 0 || t > this.times[last]) {
      this.times.push(t);
      for (const column of this.columns) column.push(null);
      row = last + 1;
    } else if (t !== this.times[last]) {
      return; // older than what is shown: a replay the gateway already de-duplicates
    }
    for (const [tsId, value] of values) {
      let i = this.index.get(tsId);
      if (i === undefined) {
        i = this.columns.length;
        this.index.set(tsId, i);
        this.columns.push(new Array(this.times.length).fill(null));
        this.plot.addSeries({ label: names(tsId), stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: false }, i + 1);
      }
      this.columns[i][row] = value;
    }
    if (this.times.length > WINDOW) {
      const drop = this.times.length - WINDOW;
      this.times.splice(0, drop);
      for (const column of this.columns) column.splice(0, drop);
    }
  }

  render() {
    this.plot.setData([this.times.map((t) => t / 1000), ...this.columns]);
  }

  drawMarkers(u) {
    const { ctx, bbox } = u;
    ctx.save();
    ctx.lineWidth = 2 * uPlot.pxRatio;
    ctx.setLineDash([6 * uPlot.pxRatio, 4 * uPlot.pxRatio]);
    for (const m of this.markers) {
      const x = Math.round(u.valToPos(m.t / 1000, "x", true));
      if (!(x >= bbox.left && x <= bbox.left + bbox.width)) continue;
      ctx.strokeStyle = m.anomalous ? "#b42318" : "#116329";
      ctx.beginPath();
      ctx.moveTo(x, bbox.top);
      ctx.lineTo(x, bbox.top + bbox.height);
      ctx.stroke();
    }
    ctx.restore();
  }

  resize() {
    this.plot.setSize({ width: this.width(), height: HEIGHT });
  }

  destroy() {
    this.plot.destroy();
    this.figure.remove();
  }
}

export class Charts {
  constructor(container) {
    this.container = container;
    this.metadata = new Map();
    this.charts = new Map();
    this.markers = [];
    this.dirty = new Set();
    this.scheduled = false;
    addEventListener("resize", () => this.charts.forEach((c) => c.resize()));
  }

  reset() {
    this.charts.forEach((c) => c.destroy());
    this.charts.clear();
    this.metadata.clear();
    this.markers.length = 0;
    this.dirty.clear();
  }

  setMetadata(tsId, props) {
    this.metadata.set(tsId, props);
  }

  props(tsId) {
    return this.metadata.get(tsId) || {};
  }

  /** A data batch: `points` is [{tsId, value}] at logical timestamp `t` (ms). */
  addBatch(t, points) {
    const byLabel = new Map();
    for (const { tsId, value } of points) {
      const label = seriesLabel(this.props(tsId));
      if (!byLabel.has(label)) byLabel.set(label, new Map());
      byLabel.get(label).set(tsId, value);
    }
    for (const [label, values] of byLabel) {
      let chart = this.charts.get(label);
      if (!chart) {
        chart = new Chart(this.container, label, this.markers);
        this.charts.set(label, chart);
      }
      chart.add(t, values, (tsId) => seriesName(tsId, this.props(tsId)));
      this.dirty.add(chart);
    }
    this.schedule();
  }

  /** A detect() event at `t` (ms): a marker on every chart. */
  addMarker(t, anomalous) {
    this.markers.push({ t, anomalous });
    this.charts.forEach((c) => this.dirty.add(c));
    this.schedule();
  }

  // Batches arrive faster than frames while a stream catches up on history: draw once a frame.
  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    const frame = () => {
      if (this.scheduled) this.flush();
    };
    if (document.hidden) setTimeout(frame, 250);
    else requestAnimationFrame(frame);
  }

  /** Draws what is pending now (a stream that ended shows all it received at once). */
  flush() {
    this.scheduled = false;
    this.dirty.forEach((c) => c.render());
    this.dirty.clear();
  }
}
