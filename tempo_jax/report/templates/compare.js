// tempo-jax comparison: two runs' candidate sets in one table, one row per step.
"use strict";
(function () {
  const A = JSON.parse(document.getElementById("data-a").textContent);
  const B = JSON.parse(document.getElementById("data-b").textContent);
  const tbl = document.getElementById("compare-table");
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function colour(p) { return "hsl(" + (40 + 175 * Math.min(1, Math.max(0, p))).toFixed(0) + ",70%,52%)"; }
  function cell(st) {
    const td = el("td", "set");
    if (!st) { td.textContent = "\u2014"; return td; }
    st.members.forEach(function (m, i) {
      const d = el("span", "member" + (st.clean === i ? " clean" : "") + (m.pruned_at !== null ? " pruned" : "") + (m.eos ? " eos" : ""));
      d.dataset.token = m.t;
      const bar = el("span", "bar");
      bar.style.width = (100 * m.p).toFixed(1) + "%";
      bar.style.background = colour(m.p);
      d.appendChild(bar);
      d.appendChild(el("span", "tok", m.eos ? "EOS" : JSON.stringify(m.x).slice(1, -1)));
      d.appendChild(el("span", "pr", " " + m.p.toFixed(2)));
      d.title = "member " + i + ", p = " + m.p.toFixed(4) + ", slot " + m.slot + ", position " + m.pos +
        (m.pruned_at !== null ? ", pruned at step " + m.pruned_at : "");
      td.appendChild(d);
    });
    return td;
  }
  const n = Math.max(A.steps.length, B.steps.length);
  let differ = 0;
  for (let s = 0; s < n; s++) {
    const a = A.steps[s], b = B.steps[s];
    const key = function (st) { return st ? st.members.map(function (m) { return m.t; }).sort().join(",") : null; };
    const same = key(a) === key(b);
    if (!same) differ++;
    const tr = el("tr", same ? "same-set" : "differs");
    tr.dataset.step = s;
    tr.appendChild(el("td", "stepno", String(s)));
    tr.appendChild(cell(a));
    tr.appendChild(cell(b));
    tbl.appendChild(tr);
  }
  const cap = el("caption", "caption", differ + " of " + n + " steps hold different token sets");
  tbl.insertBefore(cap, tbl.firstChild);
})();
