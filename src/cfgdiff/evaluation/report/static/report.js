/* cfgdiff report page: draws the trade-off plot as SVG from the embedded results and links every point to its
   sample grid, table row and grid figure. Plain ES2017, no library, no network. Inlined into report.html. */
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("cfgdiff-data").textContent);
  var SVG_NS = "http://www.w3.org/2000/svg";
  // tab10, reordered as cfgdiff.evaluation.plotting.CLASS_COLORS
  var COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf"];
  var W = 640, H = 440, M = {left: 64, right: 16, top: 16, bottom: 52};
  var svg = document.getElementById("plot");
  var prSvg = document.getElementById("pr-plot");  // precision against recall; absent without those columns
  var xSelect = document.getElementById("x-axis");
  var ySelect = document.getElementById("y-axis");
  var preview = document.getElementById("preview-img");
  var caption = document.getElementById("preview-caption");
  var pinned = null;  // {sweep, row}

  function color(s) { return COLORS[s % COLORS.length]; }
  function isNum(v) { return typeof v === "number" && isFinite(v); }
  function axis(key) {
    for (var i = 0; i < data.axes.length; i++) { if (data.axes[i].key === key) { return data.axes[i]; } }
    return null;
  }
  function el(tag, attrs, parent, text) {
    var node = document.createElementNS(SVG_NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    if (parent) { parent.appendChild(node); }
    return node;
  }
  function fmt(v) {
    if (!isNum(v)) { return "–"; }
    var a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) { return v.toExponential(2); }
    return String(Number(v.toPrecision(4)));
  }
  // "nice" tick positions (steps of 1, 2 or 5 times a power of ten) covering [lo, hi]
  function ticks(lo, hi, count) {
    var span = hi - lo, raw = span / Math.max(count, 1), mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * mag; }).find(function (s) { return s >= raw; });
    var out = [], t = Math.ceil(lo / step) * step;
    for (; t <= hi + step * 1e-9; t += step) { out.push(Math.abs(t) < step * 1e-9 ? 0 : t); }
    return out;
  }
  function range(values) {
    var lo = Math.min.apply(null, values), hi = Math.max.apply(null, values);
    if (!isFinite(lo)) { return [0, 1]; }
    if (lo === hi) { var d = Math.abs(lo) * 0.1 || 1; lo -= d; hi += d; }
    var pad = (hi - lo) * 0.06;
    return [lo - pad, hi + pad];
  }

  function rowsOf(s) {  // row indices in order of w (the order the curve runs)
    var rows = data.sweeps[s].rows, idx = rows.map(function (_, j) { return j; });
    return idx.sort(function (a, b) {
      var wa = rows[a].w, wb = rows[b].w;
      return isNum(wa) && isNum(wb) ? wa - wb : a - b;
    });
  }

  function draw() {
    drawOn(svg, xSelect.value, ySelect.value);
    if (prSvg && data.pr_axes) { drawOn(prSvg, data.pr_axes[0], data.pr_axes[1]); }
    markPinned();
  }

  function drawOn(svg, xKey, yKey) {  // one plot: every sweep's rows at (row[xKey], row[yKey]), in order of w
    var xAx = axis(xKey), yAx = axis(yKey);
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var xs = [], ys = [];
    var xFloors = [], yFloors = [];
    data.sweeps.forEach(function (sw) {
      sw.rows.forEach(function (r) {
        var x = r[xKey], y = r[yKey];
        if (!isNum(x) || !isNum(y)) { return; }
        var xe = xAx.std_key && isNum(r[xAx.std_key]) ? r[xAx.std_key] : 0;
        var ye = yAx.std_key && isNum(r[yAx.std_key]) ? r[yAx.std_key] : 0;
        xs.push(x - xe, x + xe); ys.push(y - ye, y + ye);
      });
      var fx = sw.floors[xKey], fy = sw.floors[yKey];
      if (isNum(fx) && xFloors.indexOf(fx) < 0) { xFloors.push(fx); }
      if (isNum(fy) && yFloors.indexOf(fy) < 0) { yFloors.push(fy); }
    });
    xs = xs.concat(xFloors);
    ys = ys.concat(yFloors);
    var xr = range(xs), yr = range(ys);
    var pw = W - M.left - M.right, ph = H - M.top - M.bottom;
    function X(v) { return M.left + (v - xr[0]) / (xr[1] - xr[0]) * pw; }
    function Y(v) { return M.top + (1 - (v - yr[0]) / (yr[1] - yr[0])) * ph; }
    var g = el("g", {}, svg);
    ticks(xr[0], xr[1], 7).forEach(function (t) {
      el("line", {"class": "gridline", x1: X(t), x2: X(t), y1: M.top, y2: M.top + ph}, g);
      el("text", {x: X(t), y: M.top + ph + 16, "text-anchor": "middle"}, g, fmt(t));
    });
    ticks(yr[0], yr[1], 6).forEach(function (t) {
      el("line", {"class": "gridline", x1: M.left, x2: M.left + pw, y1: Y(t), y2: Y(t)}, g);
      el("text", {x: M.left - 6, y: Y(t) + 4, "text-anchor": "end"}, g, fmt(t));
    });
    el("rect", {"class": "axis", x: M.left, y: M.top, width: pw, height: ph, fill: "none"}, g);
    el("text", {"class": "axis-label", x: M.left + pw / 2, y: H - 10, "text-anchor": "middle"}, g, xAx.label);
    el("text", {"class": "axis-label", x: 14, y: M.top + ph / 2, "text-anchor": "middle",
                transform: "rotate(-90 14 " + (M.top + ph / 2) + ")"}, g, yAx.label);
    yFloors.forEach(function (f) {  // real data scored the same way: the best a sampler can do
      el("line", {"class": "floor", x1: M.left, x2: M.left + pw, y1: Y(f), y2: Y(f)}, g);
      el("text", {x: M.left + pw - 4, y: Y(f) - 4, "text-anchor": "end"}, g, "floor " + fmt(f));
    });
    xFloors.forEach(function (f) {
      el("line", {"class": "floor", x1: X(f), x2: X(f), y1: M.top, y2: M.top + ph}, g);
      el("text", {x: X(f) + 4, y: M.top + 12}, g, "floor " + fmt(f));
    });
    var pointsLayer = el("g", {}, svg);
    data.sweeps.forEach(function (sw, s) {
      var c = color(s), order = rowsOf(s), path = [];
      var labelled = sw.rows.length <= 20;
      order.forEach(function (j) {
        var r = sw.rows[j], x = r[xKey], y = r[yKey];
        if (!isNum(x) || !isNum(y)) { return; }
        path.push(X(x).toFixed(1) + "," + Y(y).toFixed(1));
        if (xAx.std_key && isNum(r[xAx.std_key])) {
          el("line", {"class": "errbar", stroke: c, x1: X(x - r[xAx.std_key]), x2: X(x + r[xAx.std_key]),
                      y1: Y(y), y2: Y(y)}, g);
        }
        if (yAx.std_key && isNum(r[yAx.std_key])) {
          el("line", {"class": "errbar", stroke: c, x1: X(x), x2: X(x), y1: Y(y - r[yAx.std_key]),
                      y2: Y(y + r[yAx.std_key])}, g);
        }
        var pt = el("circle", {"class": "pt", cx: X(x), cy: Y(y), r: 5.5, fill: c, tabindex: 0,
                               "data-sweep": s, "data-row": j, "data-w": isNum(r.w) ? r.w : "",
                               "aria-label": sw.label + ", w = " + fmt(r.w)}, pointsLayer);
        el("title", {}, pt, sw.label + "\nw = " + fmt(r.w) + "\n" + xAx.label + " = " + fmt(x) + "\n" +
                            yAx.label + " = " + fmt(y));
        if (labelled && isNum(r.w)) {
          el("text", {"class": "w-label", x: X(x) + 7, y: Y(y) - 6, fill: c}, g, fmt(r.w));
        }
      });
      if (path.length > 1) {
        el("polyline", {"class": "curve", stroke: c, points: path.join(" ")}, g);
      }
    });
  }

  function describe(s, j) {
    var sw = data.sweeps[s], r = sw.rows[j], parts = [];
    if (data.sweeps.length > 1) { parts.push(sw.label); }
    parts.push("w = " + fmt(r.w));
    [xSelect.value, ySelect.value].forEach(function (k) {
      var ax = axis(k);
      if (ax && k !== "w") {
        var text = ax.label + " = " + fmt(r[k]);
        if (ax.std_key && isNum(r[ax.std_key])) { text += " ± " + fmt(r[ax.std_key]); }
        parts.push(text);
      }
    });
    return parts.join(" · ");
  }

  function show(s, j) {
    var fig = document.getElementById("grid-" + s + "-" + j);
    var img = fig ? fig.querySelector("img") : null;
    var note = "";
    if (!img) {  // 2-D data: one figure with every w, else nothing to show
      img = document.querySelector("#sweep-" + s + " .samples img");
      note = img ? " (samples at every w)" : " (no grid saved for this point)";
    }
    if (img) {
      preview.src = img.src;
      preview.alt = img.alt;
      preview.hidden = false;
    } else {
      preview.removeAttribute("src");
      preview.hidden = true;
    }
    preview.setAttribute("data-sweep", s);
    preview.setAttribute("data-row", j);
    caption.textContent = describe(s, j) + note;
  }

  function showPinned() {
    if (pinned) { show(pinned.sweep, pinned.row); } else {
      preview.hidden = true;
      caption.textContent = "Hover over or click a point.";
    }
  }

  function markPinned() {
    Array.prototype.forEach.call(document.querySelectorAll(".pinned"), function (n) {
      n.classList.remove("pinned");
    });
    if (!pinned) { return; }
    var sel = '[data-sweep="' + pinned.sweep + '"][data-row="' + pinned.row + '"]';
    Array.prototype.forEach.call(document.querySelectorAll(".pt" + sel + ", tr" + sel + ", .grid" + sel),
      function (n) { n.classList.add("pinned"); });
  }

  function pin(s, j) {
    pinned = {sweep: s, row: j};
    markPinned();
    show(s, j);
  }

  function target(event) {
    var node = event.target.closest ? event.target.closest("[data-sweep][data-row]") : null;
    if (!node || node === preview) { return null; }
    return {sweep: Number(node.getAttribute("data-sweep")), row: Number(node.getAttribute("data-row")),
            node: node};
  }

  [svg, prSvg].forEach(function (plot) {
    if (!plot) { return; }
    plot.addEventListener("mouseover", function (e) { var t = target(e); if (t) { show(t.sweep, t.row); } });
    plot.addEventListener("focusin", function (e) { var t = target(e); if (t) { show(t.sweep, t.row); } });
    plot.addEventListener("mouseout", function (e) { if (target(e)) { showPinned(); } });
    plot.addEventListener("click", function (e) { var t = target(e); if (t) { pin(t.sweep, t.row); } });
    plot.addEventListener("keydown", function (e) {
      var t = target(e);
      if (t && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); pin(t.sweep, t.row); }
    });
  });
  document.querySelector("main").addEventListener("click", function (e) {
    if (svg.contains(e.target) || (prSvg && prSvg.contains(e.target))) { return; }
    var t = target(e);
    if (t && (t.node.tagName === "TR" || t.node.classList.contains("grid"))) { pin(t.sweep, t.row); }
  });

  function fill(select, key) {
    data.axes.forEach(function (ax) {
      var o = document.createElement("option");
      o.value = ax.key;
      o.textContent = ax.label;
      select.appendChild(o);
    });
    if (key) { select.value = key; }
  }
  if (data.axes.length === 0) {
    document.getElementById("plot-section").hidden = true;
    return;
  }
  fill(xSelect, data.default_x || data.axes[0].key);
  fill(ySelect, data.default_y || data.axes[Math.min(1, data.axes.length - 1)].key);
  xSelect.addEventListener("change", draw);
  ySelect.addEventListener("change", draw);

  var legend = document.getElementById("legend");
  data.sweeps.forEach(function (sw, s) {
    var item = document.createElement("div"), box = document.createElement("span");
    box.style.background = color(s);
    item.appendChild(box);
    item.appendChild(document.createTextNode(sw.label));
    legend.appendChild(item);
  });
  Array.prototype.forEach.call(document.querySelectorAll("h2 .swatch"), function (n) {
    n.style.background = color(Number(n.getAttribute("data-sweep")));
  });

  // start with the best point (lowest FID, or SW_2 on 2-D data) of the first sweep shown
  var best = null, key = data.sweeps[0].best;
  data.sweeps[0].rows.forEach(function (r, j) {
    if (key && isNum(r[key]) && (best === null || r[key] < data.sweeps[0].rows[best][key])) { best = j; }
  });
  draw();
  if (best !== null) { pin(0, best); }
})();
