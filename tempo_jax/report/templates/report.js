// tempo-jax run report: builds the token lattice from the embedded JSON and, on a click, decodes
// that step's attention block (base64 float16 [L,H,Q,Kc]) and draws a layer x slot heatmap.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("run-data").textContent);
  const cap = data.capture;
  const lattice = document.getElementById("lattice");
  const heat = document.getElementById("heatmap");
  const headSel = document.getElementById("head-select");
  const label = document.getElementById("selection-label");
  const legend = document.getElementById("heat-legend");
  let current = null;  // [step, member]

  function probColour(p) {  // amber (low) -> green -> blue (high)
    const h = 40 + 175 * Math.min(1, Math.max(0, p));
    return "hsl(" + h.toFixed(0) + ",70%,52%)";
  }
  function show(x) { return JSON.stringify(x).slice(1, -1); }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // --- lattice ---------------------------------------------------------------------------------
  const pbox = document.getElementById("prompt-box");
  pbox.appendChild(el("span", "caption", "prompt: "));
  data.prompt_tokens.forEach(function (t, j) {
    const s = el("span", "ptok", t);
    s.title = "prompt token " + j + " (slot " + j + ", position " + j + ")";
    pbox.appendChild(s);
  });
  data.steps.forEach(function (st) {
    const col = el("div", "step" + (st.members.length > 1 ? " parallel" : ""));
    col.id = "step-col-" + st.step;
    const head = el("div", "step-head");
    head.appendChild(el("span", "", "step " + st.step));
    head.appendChild(el("span", "", "\u03c4 " + (st.tau === null ? "?" : st.tau.toFixed(2))));
    col.appendChild(head);
    st.members.forEach(function (m, i) {
      const d = el("div", "member");
      d.dataset.step = st.step;
      d.dataset.member = i;
      d.dataset.token = m.t;
      d.dataset.prob = m.p;
      if (st.clean === i) d.classList.add("clean");
      if (m.pruned_at !== null) d.classList.add("pruned");
      if (m.eos) d.classList.add("eos");
      const bar = el("span", "bar");
      bar.style.width = (100 * m.p).toFixed(1) + "%";
      bar.style.background = probColour(m.p);
      d.appendChild(bar);
      d.appendChild(el("span", "pr", m.p.toFixed(2)));
      d.appendChild(el("span", "tok", m.eos ? "EOS" : show(m.x)));
      if (m.pruned_at !== null) {
        d.appendChild(el("span", "pnote", "pruned @" + m.pruned_at +
          (m.score === null ? "" : " s=" + m.score.toPrecision(2))));
      }
      d.title = "step " + st.step + ", member " + i + "\ntoken " + JSON.stringify(m.x) + " (id " + m.t + ")" +
        "\np = " + m.p.toFixed(4) + "\nslot " + (m.slot < 0 ? "none (never entered the cache)" : m.slot) +
        "\nlogical position " + m.pos +
        (m.pruned_at !== null ? "\npruned at step " + m.pruned_at + (m.score === null ? "" : ", score " + m.score.toPrecision(3)) :
          (m.score !== null ? "\nprune score " + m.score.toPrecision(3) + " (kept)" : "")) +
        (st.clean === i ? "\non the clean path" : "");
      d.addEventListener("click", function () { select(st.step, i); });
      col.appendChild(d);
    });
    lattice.appendChild(col);
  });

  // --- attention data ----------------------------------------------------------------------------
  let halfTable = null;
  function half(h) {
    if (!halfTable) {
      halfTable = new Float32Array(65536);
      for (let x = 0; x < 65536; x++) {
        const s = (x & 0x8000) ? -1 : 1, e = (x >> 10) & 0x1f, f = x & 0x3ff;
        halfTable[x] = e === 0 ? s * Math.pow(2, -14) * (f / 1024) :
          e === 31 ? (f ? NaN : s * Infinity) : s * Math.pow(2, e - 15) * (1 + f / 1024);
      }
    }
    return halfTable[h];
  }
  const decoded = new Map();
  function stepBlock(s) {  // {shape:[L,H,Q,K], v: Float32Array} or {summary} or null
    if (decoded.has(s)) return decoded.get(s);
    let out = null;
    if (cap && cap.mode === "full") {
      const b = document.getElementById("step-" + s);
      if (b) {
        const shape = b.dataset.shape.split(",").map(Number);
        const bin = atob(b.textContent.trim());
        const u16 = new Uint16Array(bin.length / 2);
        for (let i = 0; i < u16.length; i++) u16[i] = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8);
        const v = new Float32Array(u16.length);
        for (let i = 0; i < u16.length; i++) v[i] = half(u16[i]);
        out = { shape: shape, v: v };
      }
    } else if (cap && cap.mode === "summary") {
      const b = document.getElementById("sum-" + s);
      if (b) out = { summary: JSON.parse(b.textContent) };
    }
    decoded.set(s, out);
    return out;
  }
  if (cap && cap.heads) {
    for (let h = 0; h < cap.heads; h++) {
      const o = el("option", "", "head " + h);
      o.value = String(h);
      headSel.appendChild(o);
    }
  }
  headSel.addEventListener("change", function () { if (current) select(current[0], current[1]); });

  function select(s, i) {
    current = [s, i];
    document.querySelectorAll(".member.selected").forEach(function (e) { e.classList.remove("selected"); });
    const me = document.querySelector('.member[data-step="' + s + '"][data-member="' + i + '"]');
    if (me) me.classList.add("selected");
    const m = data.steps[s].members[i];
    const head = headSel.value;
    heat.dataset.step = s;
    heat.dataset.member = i;
    heat.dataset.head = head;
    heat.textContent = "";
    legend.textContent = "";
    label.textContent = "step " + s + ", member " + i + ": " + JSON.stringify(m.x) + " (p " + m.p.toFixed(3) + ")";
    if (m.slot < 0) { heat.appendChild(el("p", "note", "This member never entered the cache, so it has no query row.")); return; }
    const ws = data.slots.step[m.slot];  // the step whose forward wrote (and queried from) this slot
    const q = m.slot - data.cache_len[ws];
    const blk = cap ? stepBlock(ws) : null;
    if (!cap) { heat.appendChild(el("p", "note", "No capture for this run.")); return; }
    if (!blk) {
      heat.appendChild(el("p", "note", "No attention embedded for step " + ws + (cap.every > 1 ? " (this page keeps every " + cap.every + "th step)" : "") + "."));
      return;
    }
    if (blk.summary) return drawSummary(blk.summary, q, head);
    drawHeat(blk, q, head, ws, m.slot);
  }

  function drawHeat(blk, q, head, ws, own) {
    const L = blk.shape[0], H = blk.shape[1], Q = blk.shape[2], K = blk.shape[3];
    const val = function (l, k) {
      if (head === "avg") {
        let t = 0;
        for (let h = 0; h < H; h++) t += blk.v[((l * H + h) * Q + q) * K + k];
        return t / H;
      }
      return blk.v[((l * H + Number(head)) * Q + q) * K + k];
    };
    const M = [];
    let vmax = 1e-12, smax = 1e-12;
    for (let l = 0; l < L; l++) {
      const row = new Float64Array(K);
      for (let k = 0; k < K; k++) {
        row[k] = val(l, k);
        if (k > 0) vmax = Math.max(vmax, row[k]); else smax = Math.max(smax, row[k]);
      }
      M.push(row);
    }
    const wide = K > 80;
    const cw = K > 300 ? 3 : (K > 80 ? 6 : (K > 30 ? 12 : 22));
    const tbl = el("table");
    const hr = el("tr");
    hr.appendChild(el("th", "", "layer"));
    for (let k = 0; k < K; k++) {
      const st = data.slots.step[k];
      const th = el("th", "col" + (k === own ? " own" : "") + (data.slots.pruned_at[k] >= 0 ? " pruned" : ""),
        wide ? "" : (k === 0 ? "sink " : "") + show(data.slots.x[k]));
      th.title = slotInfo(k);
      hr.appendChild(th);
    }
    tbl.appendChild(hr);
    for (let l = 0; l < L; l++) {
      const tr = el("tr");
      tr.appendChild(el("th", "", String(l)));
      for (let k = 0; k < K; k++) {
        const td = el("td", "cell" + (k === 0 ? " sink" : ""));
        const v = M[l][k];
        td.dataset.layer = l;
        td.dataset.slot = k;
        td.dataset.v = v;
        td.style.width = cw + "px";
        td.style.minWidth = cw + "px";
        const frac = k === 0 ? v / smax : v / vmax;
        td.style.background = k === 0 ? "rgba(90,60,160," + frac.toFixed(3) + ")" : "rgba(200,40,60," + frac.toFixed(3) + ")";
        td.title = "layer " + l + ", " + slotInfo(k) + "\nattention " + v.toFixed(4);
        tr.appendChild(td);
      }
      tbl.appendChild(tr);
    }
    heat.appendChild(tbl);
    const mk = function (colour, text) {
      const s = el("span", "legend-item");
      const sw = el("span", "swatch");
      sw.style.background = "linear-gradient(to right, rgba(255,255,255,1), " + colour + ")";
      s.appendChild(sw);
      s.appendChild(el("span", "", text));
      legend.appendChild(s);
    };
    mk("rgb(90,60,160)", "sink (slot 0, first column): 0 \u2192 " + smax.toFixed(3));
    mk("rgb(200,40,60)", "other slots: 0 \u2192 " + vmax.toFixed(3));
    legend.appendChild(el("span", "legend-item", (head === "avg" ? "average over " + H + " heads" : "head " + head) +
      "; query of step " + ws + ", row " + q + "; red label: the member's own slot" + (wide ? "; hover a column for its token" : "")));
  }

  function slotInfo(k) {
    const st = data.slots.step[k];
    return "slot " + k + (k === 0 ? " (sink)" : "") + ": " + JSON.stringify(data.slots.x[k]) +
      (st < 0 ? " prompt" : " step " + st + " member " + data.slots.member[k]) +
      ", position " + data.slots.pos[k] + (data.slots.pruned_at[k] >= 0 ? ", pruned at step " + data.slots.pruned_at[k] : "");
  }

  function drawSummary(sm, q, head) {
    const names = ["entropy", "sink", "leakage"].filter(function (n) { return sm[n]; });
    const titles = { entropy: "attention entropy (nats)", sink: "sink share", leakage: "sibling leakage" };
    const tbl = el("table", "summary");
    const hr = el("tr");
    hr.appendChild(el("th", "", "layer"));
    names.forEach(function (n) { hr.appendChild(el("th", "", titles[n])); });
    tbl.appendChild(hr);
    const L = sm[names[0]].length, H = sm[names[0]][0].length;
    const maxOf = {};
    names.forEach(function (n) {
      let mx = 1e-12;
      for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) mx = Math.max(mx, sm[n][l][h][q]);
      maxOf[n] = mx;
    });
    for (let l = 0; l < L; l++) {
      const tr = el("tr");
      tr.appendChild(el("th", "", String(l)));
      names.forEach(function (n) {
        let v = 0;
        if (head === "avg") { for (let h = 0; h < H; h++) v += sm[n][l][h][q]; v /= H; } else v = sm[n][l][Number(head)][q];
        const td = el("td", "scell", v.toFixed(4));
        td.dataset.layer = l;
        td.dataset.field = n;
        td.dataset.v = v;
        const b = el("span", "sbar");
        b.style.width = (60 * v / maxOf[n]).toFixed(1) + "px";
        td.appendChild(b);
        tr.appendChild(td);
      });
      tbl.appendChild(tr);
    }
    heat.appendChild(tbl);
    legend.appendChild(el("span", "legend-item", "Summary capture: per-layer values of this member's query (" +
      (head === "avg" ? "average over heads" : "head " + head) + "); bars are scaled to each column's maximum."));
  }

  window.tempoReport = { select: select, data: data };
})();
