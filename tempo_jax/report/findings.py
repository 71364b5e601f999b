"""FINDINGS.md as one self-contained HTML page: a small Markdown subset (headings, paragraphs,
lists, tables, links, bold, italics, code) with each experiment's figures embedded as base64 PNG, its
full tests tables (every family, from its summary.md) in a collapsible block, and a table of contents
linking every h2 (its h3s nested)."""

from __future__ import annotations

import base64
import glob
import html
import os
import re
from pathlib import Path

_INLINE = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|\*(.+?)\*|\[([^\]]+)\]\(([^)\s]+)\)")


def inline(text: str, base: Path | None = None, link_from: Path | None = None) -> str:
    """One line of Markdown inline syntax as HTML (everything else escaped). Links to PNG files that
    exist under ``base`` become embedded figures; with ``link_from`` (the folder the page is written
    to) other relative links are rewritten to resolve from there."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        code, bold, ital, label, href = m.groups()
        if code is not None:
            out.append(f"<code>{html.escape(code)}</code>")
        elif bold is not None:
            out.append(f"<strong>{inline(bold, base, link_from)}</strong>")
        elif ital is not None:
            out.append(f"<em>{inline(ital, base, link_from)}</em>")
        else:
            out.append(_link(label, href, base, link_from))
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _link(label: str, href: str, base: Path | None, link_from: Path | None = None) -> str:
    relative = base is not None and ":" not in href and not href.startswith(("#", "/"))
    target = (base / href) if relative and base is not None else None
    if target is not None and href.lower().endswith(".png") and target.is_file():
        b64 = base64.b64encode(target.read_bytes()).decode("ascii")
        return (f'<figure><img alt="{html.escape(label)}" src="data:image/png;base64,{b64}">'
                f"<figcaption>{html.escape(label)}</figcaption></figure>")
    if target is not None and link_from is not None:
        path, hash_, frag = href.partition("#")
        assert base is not None  # target is only set for a relative link under base
        href = Path(os.path.relpath(os.path.abspath(base / path), os.path.abspath(link_from))).as_posix()
        href += hash_ + frag
    return f'<a href="{html.escape(href, quote=True)}">{inline(label)}</a>'


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|"):
        line = line[:-1]
    return [c.strip() for c in line.split("|")]


def markdown(text: str, base: Path | None = None, link_from: Path | None = None, shift: int = 0) -> str:
    """A Markdown subset as HTML: ATX headings (``shift`` levels deeper), paragraphs, ``-`` lists, pipe
    tables, fenced code. ``base`` and ``link_from`` as in :func:`inline`."""
    inline_ = lambda t: inline(t, base, link_from)  # noqa: E731
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre><code>" + html.escape("\n".join(lines[i + 1:j])) + "</code></pre>")
            i = j + 1
            continue
        m = re.match(r"(#{1,6})\s+(.*)", line)
        if m:
            n = min(6, len(m.group(1)) + shift)
            out.append(f"<h{n}>{inline_(m.group(2))}</h{n}>")
            i += 1
            continue
        if line.lstrip().startswith("|") and i + 1 < len(lines) and re.match(r"\s*\|?\s*:?-{3,}", lines[i + 1]):
            head = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            out.append("<table><thead><tr>" + "".join(f"<th>{inline_(c)}</th>" for c in head)
                       + "</tr></thead><tbody>" + "".join(
                           "<tr>" + "".join(f"<td>{inline_(c)}</td>" for c in r) + "</tr>" for r in rows)
                       + "</tbody></table>")
            continue
        if re.match(r"\s*[-*]\s+", line):
            items = []
            while i < len(lines) and re.match(r"\s*[-*]\s+", lines[i]):
                items.append(re.sub(r"^\s*[-*]\s+", "", lines[i]))
                i += 1
            out.append("<ul>" + "".join(f"<li>{inline_(x)}</li>" for x in items) + "</ul>")
            continue
        para = []
        while (i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "```"))
               and not lines[i].lstrip().startswith("|") and not re.match(r"\s*[-*]\s+", lines[i])):
            para.append(lines[i].strip())
            i += 1
        body = inline_(" ".join(para))
        out.append("<p>" + re.sub(r"</figure>,\s*<figure", "</figure><figure", body) + "</p>")
    return "\n".join(out)


_HEADING = re.compile(r"<h([1-6])>(.*?)</h\1>", re.S)


def _text(fragment: str) -> str:
    """The text of an HTML fragment, tags dropped and still escaped."""
    return re.sub(r"<[^>]+>", "", fragment).strip()


def slug(text: str, used: set[str]) -> str:
    """An id for a heading: its words lower-cased and joined by ``-``, ``-2``, ``-3``... appended
    until it is not in ``used`` (to which it is added)."""
    base = re.sub(r"[^a-z0-9]+", "-", html.unescape(text).lower()).strip("-") or "section"
    out, k = base, 2
    while out in used:
        out, k = f"{base}-{k}", k + 1
    used.add(out)
    return out


def heading_ids(fragment: str, used: set[str], found: list) -> str:
    """``fragment`` with a unique id on every heading; appends ``(level, id, label)`` to ``found``."""
    def one(m):
        level, inner = int(m.group(1)), m.group(2)
        hid = slug(_text(inner), used)
        found.append((level, hid, _text(inner)))
        return f'<h{level} id="{hid}">{inner}</h{level}>'

    return _HEADING.sub(one, fragment)


def toc(headings) -> str:
    """A ``<nav>`` list linking every h2 of ``headings`` (``(level, id, label)``), its h3s nested."""
    items: list = []  # [(id, label) of an h2, [(id, label) of its h3s]]
    for level, hid, label in headings:
        if level == 2 or (level == 3 and not items):
            items.append(((hid, label), []))
        elif level == 3:
            items[-1][1].append((hid, label))
    link = lambda h: f'<a href="#{h[0]}">{h[1]}</a>'  # noqa: E731

    def item(top, subs) -> str:
        inner = "".join(f"<li>{link(h)}</li>" for h in subs)
        return f"<li>{link(top)}" + (f"<ul>{inner}</ul>" if inner else "") + "</li>"

    lis = "".join(item(top, subs) for top, subs in items)
    return f'<nav class="toc" aria-label="Contents"><p class="toc-title">Contents</p><ul>{lis}</ul></nav>'


def write_findings_html(findings_md, results_dir, out=None) -> Path:
    """``FINDINGS.md`` (links resolved relative to its folder) as a self-contained HTML page, each
    experiment followed by its full tests tables (from ``results_dir/<id>/summary.md``), written to
    ``out`` (default: beside FINDINGS.md); relative links are rewritten to resolve from there."""
    from tempo_jax.report.run import _env, _static

    findings_md, results_dir = Path(findings_md), Path(results_dir)
    base = findings_md.parent
    out = Path(out) if out else findings_md.with_suffix(".html")
    sections: list = []
    used: set[str] = set()
    headings: list = []
    body = findings_md.read_text() if findings_md.exists() else "# Findings\n\nNo FINDINGS.md yet.\n"
    # split at the experiments' level-2 headings so each gets its details block appended
    parts = re.split(r"(?m)^(?=## )", body)
    for part in parts:
        m = re.match(r"## (\S+)", part)
        details = None
        if m:  # the experiment's summary on each model it ran on (ID/, then ID@MODEL/)
            summaries = [results_dir / m.group(1) / "summary.md",
                         *sorted(results_dir.glob(f"{glob.escape(m.group(1))}@*/summary.md"))]
            parts_html = [markdown(re.sub(r"(?m)^# .*\n", "", f.read_text(), count=1), f.parent, out.parent,
                                   shift=1)  # its "##" under the experiment
                          for f in summaries if f.exists()]
            details = "\n".join(parts_html) or None
        main = heading_ids(markdown(part, base, out.parent), used, headings)
        sections.append({"html": main, "details": details and heading_ids(details, used, headings)})
    page = _env().get_template("findings.html.j2").render(
        title="tempo-jax research findings", sections=sections, toc=toc(headings), css=_static("report.css"))
    from tempo_jax.destinations import write_text_atomic

    write_text_atomic(out, page)
    return out
