// orchestrator dashboard: progressive enhancement only. Every page works without this file.
// - [data-live]: poll a fragment URL and replace the element's contents; paused while the tab is
//   hidden; a visible "reconnecting" state while requests fail (with backoff).
// - [data-append]: poll for tiles stored since the newest one shown and append them.
// - The mood board: click / shift-click selection, keyboard shortcuts, lightbox.
"use strict";
(function () {
  const status = document.getElementById("live-status");
  const pollers = [];
  let failures = 0;

  function setStatus(state) { if (status) status.dataset.state = state; }

  function poller(el, every, run) {
    const p = { el, every: every * 1000, run, timer: null, stopped: false };
    p.schedule = function (ms) {
      clearTimeout(p.timer);
      if (!p.stopped && !document.hidden) p.timer = setTimeout(p.tick, ms);
    };
    p.tick = async function () {
      try {
        await p.run();
        if (failures) { failures = 0; }
        setStatus("live");
        p.schedule(p.every);
      } catch (err) {
        failures += 1;
        setStatus("reconnecting");
        p.schedule(Math.min(30000, p.every * Math.pow(2, Math.min(failures, 4))));
      }
    };
    pollers.push(p);
    p.schedule(p.every);
    return p;
  }

  async function fetchFragment(url) {
    const resp = await fetch(url, { headers: { "X-Fragment": "1" }, credentials: "same-origin", cache: "no-store" });
    if (resp.status === 401) { window.location.reload(); throw new Error("signed out"); }
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    return resp.text();
  }

  function keepChecked(el, html) {
    const checked = new Set(Array.from(el.querySelectorAll("input[type=checkbox]:checked")).map((c) => c.value));
    el.innerHTML = html;
    el.querySelectorAll("input[type=checkbox]").forEach((c) => { if (checked.has(c.value)) c.checked = true; });
  }

  document.querySelectorAll("[data-live]").forEach((el) => {
    const p = poller(el, Number(el.dataset.every || 3), async () => {
      const html = await fetchFragment(el.dataset.live);
      const tpl = document.createElement("template");
      tpl.innerHTML = html.trim();
      const fresh = tpl.content.firstElementChild;
      if (fresh && fresh.id && fresh.id === el.id) {
        // The fragment is the element itself (batch progress): swap it, stop once it is final.
        el.innerHTML = fresh.innerHTML;
        el.dataset.state = fresh.dataset.state || "";
        if (!fresh.hasAttribute("data-live")) { p.stopped = true; onFinal(); }
      } else {
        keepChecked(el, html);
      }
    });
  });

  const grid = document.getElementById("grid");
  if (grid && grid.dataset.append) {
    const p = poller(grid, Number(grid.dataset.every || 3), async () => {
      const stamps = Array.from(grid.querySelectorAll(".tile")).map((t) => t.dataset.stored).filter(Boolean).sort();
      const since = stamps.length ? stamps[stamps.length - 1] : "";
      const url = grid.dataset.append + (since ? "?since=" + encodeURIComponent(since) : "");
      const html = await fetchFragment(url);
      const tpl = document.createElement("template");
      tpl.innerHTML = html;
      tpl.content.querySelectorAll(".tile").forEach((t) => {
        if (!grid.querySelector('[data-asset="' + t.dataset.asset + '"]')) { grid.appendChild(t); wireTile(t); }
      });
      const none = document.getElementById("no-images");
      if (none && grid.querySelector(".tile")) none.remove();
      if (p.finalSeen) p.stopped = true;
    });
    grid.poller = p;
  }

  function onFinal() {
    // One last tile fetch after the batch finished, then stop.
    if (grid && grid.poller) { grid.poller.finalSeen = true; grid.poller.schedule(0); }
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      pollers.forEach((p) => clearTimeout(p.timer));
      if (pollers.length) setStatus("paused");
    } else {
      pollers.forEach((p) => p.schedule(0));
    }
  });
  if (pollers.length) setStatus("live");

  // Confirmation for destructive buttons.
  document.addEventListener("click", (ev) => {
    const btn = ev.target.closest("[data-confirm]");
    if (btn && !window.confirm(btn.dataset.confirm)) ev.preventDefault();
  });

  // Tick-all checkboxes in tables.
  document.querySelectorAll("[data-check-all]").forEach((box) => {
    box.addEventListener("change", () => {
      document.querySelectorAll('input[name="' + box.dataset.checkAll + '"]').forEach((c) => { c.checked = box.checked; });
    });
  });

  // ---- mood board -------------------------------------------------------------------------
  if (!grid) return;
  const count = document.getElementById("sel-count");
  let anchor = null;
  const tiles = () => Array.from(grid.querySelectorAll(".tile"));
  const box = (t) => t.querySelector('input[name="asset"]');

  function refresh() {
    let n = 0;
    tiles().forEach((t) => { const on = box(t).checked; t.classList.toggle("selected", on); if (on) n += 1; });
    if (count) count.textContent = n + " selected";
  }
  function select(t, on) { box(t).checked = on; }

  function wireTile(t) {
    t.addEventListener("click", (ev) => {
      if (ev.target.closest("a.cid")) return;
      if (ev.target.closest("a.open")) ev.preventDefault();
      const all = tiles();
      const cb = box(t);
      const onBox = ev.target === cb;
      if (ev.shiftKey && anchor) {
        const [a, b] = [all.indexOf(anchor), all.indexOf(t)].sort((x, y) => x - y);
        const on = box(anchor).checked;
        all.slice(a, b + 1).forEach((x) => select(x, on));
        if (onBox) cb.checked = on;
      } else if (!onBox) {
        cb.checked = !cb.checked;
      }
      anchor = t;
      refresh();
    });
    t.addEventListener("dblclick", (ev) => { ev.preventDefault(); openLightbox(t); });
    t.tabIndex = 0;
  }
  tiles().forEach(wireTile);
  refresh();

  document.querySelectorAll("[data-grid]").forEach((b) => b.addEventListener("click", () => {
    tiles().forEach((t) => select(t, b.dataset.grid === "all"));
    refresh();
  }));

  // Lightbox.
  const lb = document.getElementById("lightbox");
  const lbImg = document.getElementById("lb-img");
  const lbCap = document.getElementById("lb-cap");
  let current = null;
  function openLightbox(t) {
    current = t;
    const img = t.querySelector("img");
    lbImg.src = img.currentSrc || img.src;
    lbImg.alt = img.alt;
    const details = t.querySelector(".details");
    const prompt = details.querySelector(".p").textContent;
    const facts = details.textContent.slice(prompt.length).trim();
    lbCap.textContent = t.querySelector(".cid").textContent + " · " + facts + " — " + prompt;
    lb.hidden = false;
    lb.dataset.asset = t.dataset.asset;
  }
  function closeLightbox() { lb.hidden = true; if (current) current.focus(); current = null; }
  function step(delta) {
    const all = tiles();
    const i = all.indexOf(current);
    if (i < 0) return;
    openLightbox(all[(i + delta + all.length) % all.length]);
  }
  lb.addEventListener("click", (ev) => {
    const act = ev.target.dataset.lb;
    if (act === "close" || ev.target === lb) closeLightbox();
    else if (act === "prev") step(-1);
    else if (act === "next") step(1);
  });

  const form = document.getElementById("grid-form");
  function submitOp(op) {
    const b = form.querySelector('button[name="op"][value="' + op + '"]');
    if (b) form.requestSubmit(b);
  }
  document.addEventListener("keydown", (ev) => {
    if (ev.target.closest("input, select, textarea") && ev.key !== "Escape") return;
    if (!lb.hidden) {
      if (ev.key === "ArrowRight") step(1);
      else if (ev.key === "ArrowLeft") step(-1);
      else if (ev.key === "Escape") closeLightbox();
      else if (ev.key === "x") { select(current, !box(current).checked); refresh(); }
      else return;
      ev.preventDefault();
      return;
    }
    const focused = ev.target.closest && ev.target.closest(".tile");
    if (ev.key === "a" && !ev.ctrlKey && !ev.metaKey) { tiles().forEach((t) => select(t, true)); refresh(); }
    else if (ev.key === "Escape") { tiles().forEach((t) => select(t, false)); refresh(); }
    else if (ev.key === "s") submitOp("add");
    else if (ev.key === "u") submitOp("remove");
    else if (ev.key === "Enter" && focused) openLightbox(focused);
    else if (ev.key === " " && focused) { select(focused, !box(focused).checked); anchor = focused; refresh(); }
    else return;
    ev.preventDefault();
  });
})();
