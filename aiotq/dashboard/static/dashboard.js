/* aiotq dashboard: confirmations, select-all, local times, and live updates.

   Live: the page listens to /events (server-sent events). A `summary` arrives every ~2 s and
   `events` as the workers send them; when either says something changed, the page fetches
   its own URL again and swaps in its `data-live` regions (server-rendered, so escaped as
   the first load was). Ticked boxes survive; a region holding the focused field waits. */
(function () {
  "use strict";
  var base = document.body.dataset.base || "";
  var lastSignature = null;
  var timer = null;
  var busy = false;

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var moment = new Date(el.getAttribute("datetime"));
      if (!isNaN(moment.getTime())) el.textContent = moment.toLocaleString();
    });
  }

  document.addEventListener("submit", function (event) {
    var message = event.target.dataset ? event.target.dataset.confirm : null;
    if (message && !window.confirm(message)) event.preventDefault();
  });

  document.addEventListener("change", function (event) {
    var box = event.target;
    if (box.matches && box.matches("[data-select-all]")) {
      document.querySelectorAll('input[name="ids"]').forEach(function (b) { b.checked = box.checked; });
    }
  });

  function editing(region) {
    var el = document.activeElement;
    return el && region.contains(el) && el.matches("input:not([type=checkbox]), select, textarea");
  }

  function refresh() {
    var regions = document.querySelectorAll("[data-live]");
    if (!regions.length) return;
    if (busy) { schedule(500); return; }
    busy = true;
    fetch(location.href, { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        regions.forEach(function (region) {
          var replacement = fresh.getElementById(region.id);
          if (!replacement || editing(region)) return;
          var ticked = {};
          region.querySelectorAll("input[type=checkbox]:checked").forEach(function (b) { ticked[b.value] = true; });
          region.innerHTML = replacement.innerHTML;
          region.querySelectorAll("input[type=checkbox]").forEach(function (b) { if (ticked[b.value]) b.checked = true; });
          localTimes(region);
        });
        document.body.dataset.refreshed = String(Date.now());
      })
      .catch(function () { /* the next summary tries again */ })
      .then(function () { busy = false; });
  }

  function schedule(delay) {
    if (timer !== null) return;
    timer = setTimeout(function () { timer = null; refresh(); }, delay);
  }

  function lookup(data, path) {
    return path.split(".").reduce(function (value, key) { return value == null ? value : value[key]; }, data);
  }

  function onSummary(summary) {
    document.querySelectorAll("[data-summary]").forEach(function (el) {
      var value = lookup(summary, el.dataset.summary);
      if (value !== undefined && value !== null) el.textContent = value;
    });
    var copy = Object.assign({}, summary);
    delete copy.time_s;
    var signature = JSON.stringify(copy);
    if (lastSignature === null) {
      if ((summary.latest || "") !== (document.body.dataset.latest || "")) schedule(50);
    } else if (signature !== lastSignature) {
      schedule(100);
    }
    lastSignature = signature;
  }

  function setDot(on, title) {
    var dot = document.getElementById("live-status");
    if (!dot) return;
    dot.classList.toggle("on", on);
    dot.title = "live updates: " + title;
  }

  function dispatch(kind, data) {
    setDot(true, "connected");
    if (kind === "summary") onSummary(data);
    else if (kind === "events") schedule(300);
  }

  // One stream per browser, not per tab: HTTP/1.1 allows six connections to a host, and an
  // open stream holds one for good. The tab holding the lock reads the stream and passes
  // what it hears to the others over a BroadcastChannel; when it closes, another takes over.
  function stream(deliver) {
    var source = new EventSource(base + "/events");
    source.addEventListener("open", function () { setDot(true, "connected"); });
    source.addEventListener("error", function () { setDot(false, "reconnecting"); });
    ["summary", "events"].forEach(function (kind) {
      source.addEventListener(kind, function (event) { deliver(kind, JSON.parse(event.data)); });
    });
    window.addEventListener("pagehide", function () { source.close(); });
    return source;
  }

  function connect() {
    if (!window.EventSource) return;
    var name = "aiotq-live:" + location.host + base;
    if (!(window.BroadcastChannel && navigator.locks)) {
      stream(dispatch);
      return;
    }
    var channel = new BroadcastChannel(name);
    channel.onmessage = function (event) { dispatch(event.data.kind, event.data.data); };
    navigator.locks.request(name, function () {
      return new Promise(function () {  // held until this page goes away
        stream(function (kind, data) {
          dispatch(kind, data);
          channel.postMessage({ kind: kind, data: data });
        });
      });
    });
  }

  localTimes(document);
  connect();
  var poll = parseFloat(document.body.dataset.poll || "0");
  if (poll > 0) setInterval(function () { schedule(0); }, poll * 1000);
})();
