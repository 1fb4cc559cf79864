/* job-processor dashboard: live refresh of the [data-live] parts of a page, relative times,
   "select all" checkboxes. Everything works without it: this only spares full reloads. */
(function () {
  "use strict";
  var body = document.body;
  var period = parseFloat(body.getAttribute("data-refresh") || "0") * 1000;
  var toggle = document.getElementById("live-toggle");
  var KEY = "jp-dashboard-live-paused";
  var paused = false;
  try { paused = localStorage.getItem(KEY) === "1"; } catch (e) { /* private mode */ }
  var timer = null;
  var inflight = false;
  var stopped = false;  // signed out or throttled: no more refreshes until a reload
  var lastOk = Date.now();

  function units(s) {
    if (s < 1) return null;
    if (s < 60) return Math.floor(s) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    if (s < 86400) return Math.floor(s / 3600) + " h";
    return Math.floor(s / 86400) + " d";
  }

  function relTimes(root) {
    var now = Date.now();
    (root || document).querySelectorAll("time[datetime]").forEach(function (el) {
      if (el.closest(".foot")) return;
      var t = Date.parse(el.getAttribute("datetime"));
      if (isNaN(t)) return;
      var d = (t - now) / 1000;
      var u = units(Math.abs(d));
      el.textContent = u === null ? "now" : d > 0 ? "in " + u : u + " ago";
    });
  }

  function label(text, cls) {
    if (!toggle) return;
    toggle.hidden = false;
    toggle.className = "live " + (cls || "");
    toggle.querySelector(".live-text").textContent = text;
  }

  function busy() {
    // never swap what the user is typing in (checked boxes are carried over by refresh(); a
    // box just clicked keeps the focus, and is no typing)
    var a = document.activeElement;
    if (!a || !a.closest || !a.closest("[data-live]")) return false;
    if (a.tagName === "INPUT" && /^(checkbox|radio|button|submit|reset)$/i.test(a.type)) return false;
    return /INPUT|SELECT|TEXTAREA/.test(a.tagName);
  }

  function detailsKey(x, i) {
    // an opened error stays open: by its key (a run, a delivery), else by its place
    return x.getAttribute("data-key") || "#" + i;
  }

  function refresh() {
    if (stopped || paused || inflight || document.hidden || busy()) return;
    inflight = true;
    fetch(location.href, { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401 || r.status === 403 || r.status === 429) {
          // signed out (the password changed, or an auth callable no longer allows the user:
          // 403) or throttled: refreshing again would only add failed logins; a reload asks
          // for the password (a 403 is no outage: "Offline" would say the server is down)
          stopped = true;
          if (timer) clearInterval(timer);
          label("Signed out: reload", "offline");
          throw new Error("stopped");
        }
        if (r.status === 404) {
          // what the page shows is gone (a job or event deleted elsewhere): say so, in place of
          // its content and its buttons, and stop refreshing
          stopped = true;
          if (timer) clearInterval(timer);
          label("Gone", "offline");
          return r.text().then(function (html) {
            var gone = new DOMParser().parseFromString(html, "text/html").querySelector("main");
            var main = document.querySelector("main");
            if (gone && main) main.innerHTML = gone.innerHTML;
            throw new Error("gone");
          });
        }
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (el) {
          var fresh = el.id && doc.getElementById(el.id);
          if (!fresh) return;
          var checked = {};  // ticked boxes, and selections carried from rows gone before
          el.querySelectorAll("input[type=checkbox]:checked, input[data-carried]").forEach(function (c) { checked[c.name + "=" + c.value] = c; });
          var open = {};
          el.querySelectorAll("details").forEach(function (x, i) { if (x.open) open[detailsKey(x, i)] = true; });
          var scrolled = [];  // scroll boxes (a long payload or traceback, a wide table)
          el.querySelectorAll("pre, .table-wrap").forEach(function (x, i) { if (x.scrollTop || x.scrollLeft) scrolled.push([i, x.scrollTop, x.scrollLeft]); });
          el.innerHTML = fresh.innerHTML;
          var boxes = el.querySelectorAll("pre, .table-wrap");
          scrolled.forEach(function (s) { var x = boxes[s[0]]; if (x) { x.scrollTop = s[1]; x.scrollLeft = s[2]; } });
          el.querySelectorAll("input[type=checkbox]").forEach(function (c) {
            var key = c.name + "=" + c.value;
            if (checked[key]) { c.checked = true; delete checked[key]; }
          });
          Object.keys(checked).forEach(function (key) {  // a selected row the refresh pushed off: still selected
            var was = checked[key];
            if (!was.name || !was.getAttribute("form")) return;
            var keep = document.createElement("input");
            keep.type = "hidden"; keep.name = was.name; keep.value = was.value;
            keep.setAttribute("form", was.getAttribute("form")); keep.setAttribute("data-carried", "");
            el.appendChild(keep);
          });
          el.querySelectorAll("details").forEach(function (x, i) { if (open[detailsKey(x, i)]) x.open = true; });
        });
        relTimes();
        lastOk = Date.now();
        body.setAttribute("data-refreshed", String(lastOk));
        label("Live");
      })
      .catch(function () { if (!stopped) label("Offline", "offline"); })
      .finally(function () { inflight = false; });
  }

  function start() {
    if (!period) return;
    if (timer) clearInterval(timer);
    timer = setInterval(refresh, period);
    label(paused ? "Paused" : "Live", paused ? "paused" : "");
  }

  if (toggle && period) {
    toggle.addEventListener("click", function () {
      if (stopped) return;  // signed out or gone: it says so until a reload, never "Live"
      paused = !paused;
      try { localStorage.setItem(KEY, paused ? "1" : "0"); } catch (e) { /* ignore */ }
      label(paused ? "Paused" : "Live", paused ? "paused" : "");
      toggle.setAttribute("aria-pressed", paused ? "true" : "false");
      if (!paused) refresh();
    });
    toggle.title = "Live refresh every " + period / 1000 + " s — click to pause";
    document.addEventListener("visibilitychange", function () { if (!document.hidden) refresh(); });
    start();
  }

  document.addEventListener("change", function (ev) {
    var t = ev.target;
    if (t && t.matches && t.matches("input[data-check-all]")) {
      var name = t.getAttribute("data-check-all");
      document.querySelectorAll('input[type=checkbox][name="' + name + '"]').forEach(function (c) { c.checked = t.checked; });
      if (!t.checked) {  // unselected: the rows a refresh pushed off the page too
        document.querySelectorAll('input[data-carried][name="' + name + '"]').forEach(function (c) { c.remove(); });
      }
    }
  });

  function offerCheckAll() {  // "select all" works with this script only: hidden without it
    document.querySelectorAll("input[data-check-all][hidden]").forEach(function (c) { c.hidden = false; });
  }
  offerCheckAll();
  new MutationObserver(offerCheckAll).observe(document.body, { childList: true, subtree: true });

  setInterval(function () { relTimes(); }, 5000);
})();
