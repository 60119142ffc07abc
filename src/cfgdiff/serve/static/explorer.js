/* cfgdiff explorer page: builds the controls from /api/info and asks /api/grid for a new grid whenever a
   control changes. At most one request is in flight; changes made meanwhile are merged into the next one,
   so dragging w never queues up stale grids. Plain ES2017, no library. */
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var info = null;
  var inflight = false;
  var queued = null;  // the query to send when the request in flight returns
  var lastSent = null;
  var PAD = 1;  // pixels between images in the server's mosaic (cfgdiff.serve.images.PAD)

  function fmtW(w) { return String(Number(Number(w).toFixed(4))); }

  function showError(message) {
    var box = $("error");
    box.textContent = message;
    box.hidden = !message;
  }

  function selectedClasses() {
    return Array.prototype.filter.call(document.querySelectorAll("#classes input"), function (c) {
      return c.checked;
    }).map(function (c) { return c.value; });
  }

  function query() {
    var q = new URLSearchParams();
    q.set("w", $("w-exact").value);
    q.set("classes", selectedClasses().join(","));
    q.set("n", $("n").value);
    q.set("sampler", $("sampler").value);
    q.set("steps", $("steps").value);
    q.set("seed", $("seed").value);
    var composed = $("compose").value.trim();
    q.set("method", composed ? "cfg" : $("method").value);
    if (composed) { q.set("compose", composed); q.delete("classes"); }
    if ($("sampler").value === "ancestral") { q.set("v_interp", $("v-interp").value); }
    if ($("interval-on").checked) { q.set("interval", $("interval-lo").value + "," + $("interval-hi").value); }
    Array.prototype.forEach.call(document.querySelectorAll("#method-params input"), function (input) {
      if (composed) { return; }
      q.set("p." + input.name, input.type === "checkbox" ? String(input.checked) : input.value);
    });
    return q.toString();
  }

  function update() {
    var q = query();
    if (inflight) { queued = q; return; }
    send(q);
  }

  function send(q) {
    inflight = true;
    lastSent = q;
    fetch("api/grid?" + q, {cache: "no-store"}).then(function (response) {
      return response.json().then(function (body) { return {ok: response.ok, status: response.status, body: body}; },
        function () { return {ok: false, status: response.status, body: {error: "HTTP " + response.status}}; });
    }).then(function (r) {
      if (r.ok) { showGrid(r.body); showError(""); } else { showError(r.body.error || ("HTTP " + r.status)); }
    }).catch(function () {
      showError("the explorer server is not answering (stopped?)");
    }).then(function () {
      inflight = false;
      if (queued !== null) {
        var next = queued;
        queued = null;
        if (next !== lastSent) { send(next); }
      }
    });
  }

  function showGrid(g) {
    var img = $("grid");
    img.onload = function () {
      var cellH = info.is_image ? info.data_shape[1] : 0;
      var scale = info.is_image ? Math.max(1, Math.ceil(48 / cellH)) : 1;
      img.style.width = (img.naturalWidth * scale) + "px";
      img.style.height = (img.naturalHeight * scale) + "px";
      var labels = $("row-labels");
      labels.textContent = "";
      if (info.is_image) {
        labels.style.paddingTop = (PAD * scale) + "px";
        g.class_names.forEach(function (name) {
          var d = document.createElement("div");
          d.textContent = name;
          d.style.height = ((cellH + PAD) * scale) + "px";
          d.style.lineHeight = (cellH * scale) + "px";
          labels.appendChild(d);
        });
      } else {
        g.class_names.forEach(function (name, i) {
          var d = document.createElement("div");
          d.textContent = "● " + name;
          d.className = "legend-" + (g.classes[i] % 10);
          labels.appendChild(d);
        });
      }
    };
    img.src = g.image;
    img.setAttribute("data-w", g.w);
    var parts = ["w = " + fmtW(g.w), g.samples + " samples", g.sampler + ", " + g.steps + " steps",
                 g.method + (g.interval ? " in σ ∈ (" + g.interval[0] + ", " + g.interval[1] + "]" : ""),
                 "NFE/sample " + Number(g.nfe_per_sample.toFixed(2)),
                 (g.seconds * 1000).toFixed(0) + " ms per grid"];
    $("stats").textContent = parts.join(" · ");
    $("stats").setAttribute("data-w", g.w);
  }

  function setW(value, fromSlider) {
    $("w-value").textContent = fmtW(value);
    $("s-value").textContent = fmtW(Number(value) + 1);
    if (fromSlider) { $("w-exact").value = value; } else { $("w").value = value; }
  }

  function methodParams() {
    var box = $("method-params");
    box.textContent = "";
    var method = info.methods.filter(function (m) { return m.name === $("method").value; })[0];
    $("method-doc").textContent = method ? method.doc : "";
    if (!method) { return; }
    method.params.forEach(function (p) {
      var label = document.createElement("label");
      var input = document.createElement("input");
      input.name = p.name;
      if (p.boolean) {
        input.type = "checkbox";
        input.checked = Boolean(p.default);
      } else if (typeof p.default === "string") {  // e.g. "inf", which a number field cannot hold
        input.type = "text";
        input.size = 6;
        input.value = p.default;
      } else {
        input.type = "number";
        input.step = p.integer ? "1" : "any";
        if (p.min !== null) { input.min = p.min; }
        if (p.max !== null) { input.max = p.max; }
        input.value = p.default === null ? "" : p.default;
      }
      input.title = p.doc || p.name;
      label.appendChild(document.createTextNode(p.name + " "));
      label.appendChild(input);
      box.appendChild(label);
    });
  }

  function options(select, values, labels) {
    values.forEach(function (v, i) {
      var o = document.createElement("option");
      o.value = v;
      o.textContent = labels ? labels[i] : v;
      select.appendChild(o);
    });
  }

  function build(data) {
    info = data;
    var d = data.defaults;
    $("model-name").textContent = "· " + data.name;
    document.title = "cfgdiff explorer · " + data.name;
    options($("sampler"), data.samplers);
    options($("method"), data.methods.map(function (m) { return m.name; }));
    $("sampler").value = d.sampler;
    $("method").value = d.method;
    $("steps").value = d.steps;
    $("steps").max = data.limits.max_steps;
    $("n").value = d.n;
    $("seed").value = d.seed;
    $("interval-lo").value = d.interval[0];
    $("interval-hi").value = d.interval[1];
    $("v-interp").value = d.v_interp;
    setW(d.w, false);
    $("w-exact").value = d.w;
    var box = $("classes");
    data.class_names.forEach(function (name, k) {
      var label = document.createElement("label");
      var input = document.createElement("input");
      input.type = "checkbox";
      input.value = k;
      input.checked = d.classes.indexOf(k) >= 0;
      label.appendChild(input);
      label.appendChild(document.createTextNode(" " + name));
      box.appendChild(label);
    });
    if (data.limits.w) {
      $("w-exact").min = data.limits.w[0];
      $("w-exact").max = data.limits.w[1];
    }
    $("limits").textContent = "Limits of this server: " + data.limits.max_samples + " samples and " +
      data.limits.max_steps + " steps per grid" +
      (data.limits.w ? "; w in [" + data.limits.w[0] + ", " + data.limits.w[1] + "], seeds in [0, 2^63 - 1]" : "") +
      ".";
    methodParams();
    $("v-row").hidden = $("sampler").value !== "ancestral";

    $("w").addEventListener("input", function () { setW($("w").value, true); update(); });
    $("w-exact").addEventListener("change", function () { setW($("w-exact").value, false); update(); });
    $("method").addEventListener("change", function () { methodParams(); update(); });
    $("sampler").addEventListener("change", function () {
      $("v-row").hidden = $("sampler").value !== "ancestral";
      update();
    });
    $("controls").addEventListener("change", function (e) {
      if (["w", "w-exact", "method", "sampler"].indexOf(e.target.id) < 0) { update(); }
    });
    $("controls").addEventListener("submit", function (e) { e.preventDefault(); update(); });
    $("classes-all").addEventListener("click", function () {
      Array.prototype.forEach.call(document.querySelectorAll("#classes input"), function (c) { c.checked = true; });
      update();
    });
    $("classes-none").addEventListener("click", function () {
      Array.prototype.forEach.call(document.querySelectorAll("#classes input"), function (c) { c.checked = false; });
      update();
    });
    update();
  }

  fetch("api/info", {cache: "no-store"}).then(function (r) { return r.json(); }).then(build).catch(function () {
    showError("could not load the model's description from the server");
  });
})();
