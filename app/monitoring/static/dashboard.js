// The cache dashboard: reads /cache/stats and /cache/stats/history with an admin token kept in
// sessionStorage, draws the history with uPlot and refreshes every STATS_INTERVAL seconds.
// Snapshots hold cumulative counters, so per-interval figures are differences of neighbours.
(function () {
  "use strict";

  var TOKEN_KEY = "opensensor.dashboard.token";
  var body = document.body;
  var interval = Math.max(1, parseInt(body.dataset.statsInterval, 10) || 60);
  var historyLimit = Math.max(1, parseInt(body.dataset.historyLimit, 10) || 60);
  var $ = function (id) { return document.getElementById(id); };
  var timer = null;
  var charts = {};

  // -- formatting -----------------------------------------------------------------------------
  function pct(x) { return x == null ? "–" : (x * 100).toFixed(1) + " %"; }
  function num(x) { return x == null ? "–" : Number(x).toLocaleString("en-US"); }
  function rate(x) { return x == null ? "–" : (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2)) + "/s"; }
  function bytes(x) {
    if (x == null) return "–";
    var units = ["B", "KiB", "MiB", "GiB"], i = 0;
    while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
    return x.toFixed(i ? 1 : 0) + " " + units[i];
  }
  function ago(iso) {
    if (!iso) return "never";
    var s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (s < 90) return s + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }
  function pill(el, text, kind) { el.textContent = text; el.className = "pill " + kind; }

  function show(text, kind) {
    var el = $("message");
    el.textContent = text;
    el.className = "message " + kind;
    el.hidden = false;
  }
  function clearMessage() { $("message").hidden = true; }

  // -- talking to the admin routes ----------------------------------------------------------------
  function token() { return sessionStorage.getItem(TOKEN_KEY); }

  function call(method, path, payload) {
    var options = { method: method, headers: { Authorization: "Bearer " + token() }, cache: "no-store" };
    if (payload !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(payload);
    }
    return fetch(path, options).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok) {
          var error = (data && data.error) || {};
          var err = new Error(response.status + " " + (error.code || response.statusText) + ": " + (error.message || "request failed"));
          err.status = response.status;
          throw err;
        }
        return data;
      });
    });
  }

  // -- charts -------------------------------------------------------------------------------------
  var COLORS = { hit: "#16a34a", miss: "#dc2626", load: "#2563eb", error: "#b91c1c", keys: "#7c3aed", memory: "#0891b2", ratio: "#2563eb" };

  function series(label, color, fmt, fill) {
    return { label: label, stroke: color, width: 2, fill: fill ? color + "22" : undefined, spanGaps: false,
             points: { show: true, size: 4 }, value: function (u, v) { return fmt(v); } };
  }

  // minTop: the least top of the y axis, so a flat zero line still gets readable ticks.
  var SPECS = {
    "chart-hit-ratio": { series: [series("hit ratio", COLORS.ratio, pct, true)], axis: pct, minTop: 1 },
    "chart-lookups": { series: [series("hits/s", COLORS.hit, rate), series("misses/s", COLORS.miss, rate)], axis: rate, minTop: 1 },
    "chart-loads": { series: [series("loads/s", COLORS.load, rate, true)], axis: rate, minTop: 1 },
    "chart-errors": { series: [series("errors/s", COLORS.error, rate, true)], axis: rate, minTop: 1 },
    "chart-keys": { series: [series("keys", COLORS.keys, num, true)], axis: num, minTop: 10 },
    "chart-memory": { series: [series("used memory", COLORS.memory, bytes, true)], axis: bytes, minTop: 1048576, size: 84 },
  };

  function width(el) { return Math.max(240, el.clientWidth - 24); }

  function makeChart(id) {
    var spec = SPECS[id], el = $(id);
    var opts = {
      width: width(el),
      height: 190,
      series: [{ value: function (u, v) { return v == null ? "–" : new Date(v * 1000).toLocaleTimeString(); } }].concat(spec.series),
      axes: [
        { stroke: "#5f6b7a", grid: { stroke: "#eef2f7" } },
        { stroke: "#5f6b7a", grid: { stroke: "#eef2f7" }, size: spec.size || 64,
          values: function (u, splits) { return splits.map(function (v) { return spec.axis(v); }); } },
      ],
      scales: { y: { range: function (u, min, max) { return [0, id === "chart-hit-ratio" ? 1 : Math.max((max || 0) * 1.15, spec.minTop)]; } } },
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
    };
    var empty = [[]].concat(spec.series.map(function () { return []; }));
    charts[id] = new uPlot(opts, empty, el);
  }

  function perInterval(snaps) {
    var out = { t: [], ratio: [], hits: [], misses: [], loads: [], errors: [], keys: [], memory: [] };
    snaps.forEach(function (s, i) {
      out.t.push(Date.parse(s.at) / 1000);
      out.keys.push(s.keys == null ? null : s.keys);
      out.memory.push(s.used_memory == null ? null : s.used_memory);
      var prev = snaps[i - 1];
      var dt = prev ? out.t[i] - out.t[i - 1] : 0;
      var d = function (name) {
        if (!prev || dt <= 0 || s[name] == null || prev[name] == null) return null;
        var diff = s[name] - prev[name];
        return diff < 0 ? null : diff; // a reset (the counters were emptied): no figure
      };
      var dh = d("hits"), dm = d("misses"), dl = d("loads"), de = d("errors");
      out.ratio.push(dh == null || dm == null || dh + dm === 0 ? null : dh / (dh + dm));
      out.hits.push(dh == null ? null : dh / dt);
      out.misses.push(dm == null ? null : dm / dt);
      out.loads.push(dl == null ? null : dl / dt);
      out.errors.push(de == null ? null : de / dt);
    });
    return out;
  }

  function draw(snaps) {
    var p = perInterval(snaps);
    var data = {
      "chart-hit-ratio": [p.t, p.ratio],
      "chart-lookups": [p.t, p.hits, p.misses],
      "chart-loads": [p.t, p.loads],
      "chart-errors": [p.t, p.errors],
      "chart-keys": [p.t, p.keys],
      "chart-memory": [p.t, p.memory],
    };
    Object.keys(data).forEach(function (id) {
      charts[id].setData(data[id]);
      $(id).dataset.points = String(p.t.length);
    });
  }

  // -- current state ------------------------------------------------------------------------------
  function state(stats) {
    var lookups = (stats.lookups && stats.lookups.device) || {};
    var redis = stats.redis || {};
    var collector = stats.collector || {};
    $("hit-ratio").textContent = pct(lookups.hit_ratio);
    $("hit-ratio-note").textContent = "since the counters began (" + (lookups.scope || "all replicas") + ")";
    $("lookups").textContent = num((lookups.hits || 0) + (lookups.misses || 0));
    $("lookups-note").textContent = num(lookups.hits) + " hits (" + num(lookups.l1_hits || 0) + " in process) · " + num(lookups.misses) + " misses · " + num(lookups.loads) + " loads · " + num(lookups.errors) + " errors";
    $("keys").textContent = num(stats.keys && stats.keys.count);
    $("memory").textContent = "Redis memory " + (redis.used_memory_human || "–");
    var open = stats.breaker && stats.breaker.open;
    pill($("breaker"), open ? "open: serving from MongoDB" : "closed", open ? "bad" : "ok");
    $("redis").textContent = redis.reachable ? "Redis " + (redis.version || "") + " reachable" : "Redis unreachable";
    pill($("collector"), collector.stale ? "stale" : "running", collector.stale ? "warn" : "ok");
    $("collector-note").textContent = "last run " + ago(collector.last_run);
    $("warmer").textContent = ago(collector.warmer_last_run);
  }

  function refresh() {
    if (!token()) {
      show("Enter an admin token to load the cache's statistics.", "info");
      return Promise.resolve();
    }
    return Promise.all([call("GET", "/cache/stats"), call("GET", "/cache/stats/history?limit=" + historyLimit)])
      .then(function (answers) {
        if (!$("message").classList.contains("ok")) clearMessage(); // keep an action's result
        state(answers[0]);
        draw(answers[1].snapshots || []);
        $("updated").textContent = "Updated " + new Date().toLocaleTimeString() + " · " + (answers[1].snapshots || []).length + " snapshots";
      })
      .catch(function (err) {
        var hint = err.status === 401 ? " Check the token." : err.status === 403 ? " This token is not an admin's." : "";
        show(err.message + hint, "error");
      });
  }

  function schedule() {
    if (timer) clearInterval(timer);
    timer = setInterval(refresh, interval * 1000);
  }

  // -- wiring ---------------------------------------------------------------------------------------
  $("token-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var value = $("token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    refresh().then(schedule);
  });
  $("forget").addEventListener("click", function () {
    sessionStorage.removeItem(TOKEN_KEY);
    show("Token forgotten.", "info");
  });
  $("warm").addEventListener("click", function () {
    if (!window.confirm("Queue a warm-up of the hottest devices now?")) return;
    call("POST", "/cache/warm", {})
      .then(function (data) { show("Warm-up queued (task " + data.task_id + ").", "ok"); })
      .catch(function (err) { show(err.message, "error"); });
  });
  $("invalidate-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var pattern = $("pattern").value.trim();
    if (!pattern || !window.confirm('Drop every cached key matching "' + pattern + '"?')) return;
    call("POST", "/cache/invalidate", { pattern: pattern })
      .then(function (data) { show("Deleted " + data.deleted + " keys matching " + data.pattern + ".", "ok"); return refresh(); })
      .catch(function (err) { show(err.message, "error"); });
  });
  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (id) { charts[id].setSize({ width: width($(id)), height: 190 }); });
  });

  Object.keys(SPECS).forEach(makeChart);
  refresh().then(schedule);
})();
