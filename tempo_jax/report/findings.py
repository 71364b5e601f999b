"""FINDINGS.md as one self-contained HTML page: a small Markdown subset (headings, paragraphs,
lists, tables, links, bold, italics, code) with each experiment's figures embedded as base64 PNG and
its full tests tables (every family, from its summary.md) in a collapsible block."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_INLINE = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|\*(.+?)\*|\[([^\]]+)\]\(([^)\s]+)\)")


def inline(text: str, base: Path | None = None) -> str:
    """One line of Markdown inline syntax as HTML (everything else escaped). Links to PNG files that
    exist under ``base`` become embedded figures."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        code, bold, ital, label, href = m.groups()
        if code is not None:
            out.append(f"<code>{html.escape(code)}</code>")
        elif bold is not None:
            out.append(f"<strong>{inline(bold, base)}</strong>")
        elif ital is not None:
            out.append(f"<em>{inline(ital, base)}</em>")
        else:
            out.append(_link(label, href, base))
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _link(label: str, href: str, base: Path | None) -> str:
    target = (base / href) if base is not None and "://" not in href else None
    if target is not None and href.lower().endswith(".png") and target.is_file():
        b64 = base64.b64encode(target.read_bytes()).decode("ascii")
        return (f'<figure><img alt="{html.escape(label)}" src="data:image/png;base64,{b64}">'
                f"<figcaption>{html.escape(label)}</figcaption></figure>")
    return f'<a href="{html.escape(href, quote=True)}">{inline(label)}</a>'


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|"):
        line = line[:-1]
    return [c.strip() for c in line.split("|")]


def markdown(text: str, base: Path | None = None) -> str:
    """A Markdown subset as HTML: ATX headings, paragraphs, ``-`` lists, pipe tables, fenced code."""
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
            n = len(m.group(1))
            out.append(f"<h{n}>{inline(m.group(2), base)}</h{n}>")
            i += 1
            continue
        if line.lstrip().startswith("|") and i + 1 < len(lines) and re.match(r"\s*\|?\s*:?-{3,}", lines[i + 1]):
            head = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            out.append("<table><thead><tr>" + "".join(f"<th>{inline(c, base)}</th>" for c in head)
                       + "</tr></thead><tbody>" + "".join(
                           "<tr>" + "".join(f"<td>{inline(c, base)}</td>" for c in r) + "</tr>" for r in rows)
                       + "</tbody></table>")
            continue
        if re.match(r"\s*[-*]\s+", line):
            items = []
            while i < len(lines) and re.match(r"\s*[-*]\s+", lines[i]):
                items.append(re.sub(r"^\s*[-*]\s+", "", lines[i]))
                i += 1
            out.append("<ul>" + "".join(f"<li>{inline(x, base)}</li>" for x in items) + "</ul>")
            continue
        para = []
        while (i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "```"))
               and not lines[i].lstrip().startswith("|") and not re.match(r"\s*[-*]\s+", lines[i])):
            para.append(lines[i].strip())
            i += 1
        body = inline(" ".join(para), base)
        out.append("<p>" + re.sub(r"</figure>,\s*<figure", "</figure><figure", body) + "</p>")
    return "\n".join(out)


def write_findings_html(findings_md, results_dir, out=None) -> Path:
    """``FINDINGS.md`` (links resolved relative to its folder) as a self-contained HTML page, each
    experiment followed by its full tests tables (from ``results_dir/<id>/summary.md``)."""
    from tempo_jax.report.run import _env, _static

    findings_md, results_dir = Path(findings_md), Path(results_dir)
    base = findings_md.parent
    sections = []
    body = findings_md.read_text() if findings_md.exists() else "# Findings\n\nNo FINDINGS.md yet.\n"
    # split at the experiments' level-2 headings so each gets its details block appended
    parts = re.split(r"(?m)^(?=## )", body)
    for part in parts:
        m = re.match(r"## (\S+)", part)
        details = None
        if m:
            summary = results_dir / m.group(1) / "summary.md"
            if summary.exists():
                text = re.sub(r"(?m)^# .*\n", "", summary.read_text(), count=1)
                details = markdown(text, summary.parent)
        sections.append({"html": markdown(part, base), "details": details})
    page = _env().get_template("findings.html.j2").render(
        title="tempo-jax research findings", sections=sections, css=_static("report.css"))
    out = Path(out) if out else findings_md.with_suffix(".html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out
