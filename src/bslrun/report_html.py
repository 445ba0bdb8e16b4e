"""report.html: one self-contained page (inline CSS, plots as inline PNG, no external
links) of what the Markdown report holds, with the plots side by side."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from bslrun.runs import Run, relative
from bslrun.summary import Link, Page, settings_lines

CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:75em}"
    "table{border-collapse:collapse;margin:1em 0}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "th{background:#f3f3f3}img{max-width:100%}code{background:#f6f6f6}"
    "td:first-child{text-align:left;white-space:nowrap}"
    ".plots{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}"
    "table.settings th,table.settings td{text-align:left;border:none;padding:2px 8px}"
    "table.settings th{background:none;color:#555}"
)


def html_cell(cell, tag: str = "td") -> str:
    esc = html.escape
    if isinstance(cell, Link):
        link = f"<a href='{esc(cell.href)}' title='{esc(cell.title)}'>{esc(cell.text)}</a>"
        return f"<{tag}>{link}</{tag}>"
    return f"<{tag}>{esc(cell)}</{tag}>"


def html_table(cells: list) -> str:
    head = "".join(html_cell(c, "th") for c in cells[0])
    body = "".join("<tr>" + "".join(map(html_cell, row)) + "</tr>" for row in cells[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def settings_html(settings: dict, count: int) -> str:
    lines = settings_lines(settings)
    if not lines:
        return ""
    esc = html.escape
    head = f"Settings shared by all {count} completed runs" if count > 1 else "Settings"
    body = "".join(f"<tr><th>{esc(s or 'run')}</th><td>{esc(t)}</td></tr>" for s, t in lines)
    return f"<p>{head}:</p><table class='settings'>{body}</table>"


def others_html(others: list[Run], base: Path) -> str:
    esc = html.escape
    items = "".join(
        f"<li>{esc(r.status)}: <code>{esc(relative(r.path, base))}</code>: {esc(r.message)}</li>"
        for r in others
    )
    return f"<h2>Failed or unfinished runs</h2><ul>{items}</ul>" if others else ""


def plots_html(plots: dict) -> str:
    """The figures side by side, wrapping to the page's width; each an inline PNG."""
    esc = html.escape
    images = "".join(
        f"<img alt='{esc(heading)}' title='{esc(heading)}' "
        f"src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"
        for heading, png in plots.items()
    )
    return f"<h2>Plots</h2><div class='plots'>{images}</div>" if plots else ""


def html_report(page: Page) -> str:
    """One self-contained page: the Markdown report's parts, then the plots (inline PNG)."""
    esc = html.escape
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(page.title)}</title>",
        f"<style>{CSS}</style></head><body><h1>{esc(page.title)}</h1>",
        settings_html(page.settings, page.completed),
        html_table(page.cells),
        f"<p>{esc(page.note)}</p>",
    ]
    for title, section_cells, notes in page.sections:
        items = "".join(f"<li>{esc(note)}</li>" for note in notes)
        parts.append(f"<h2>{esc(title)}</h2>{html_table(section_cells)}<ul>{items}</ul>")
    parts.append(others_html(page.others, page.base))
    parts.append(plots_html(page.plots))
    if page.runs:
        parts.append(f"<h2>Runs</h2>{html_table(page.runs)}")
    return "".join(parts) + "</body></html>\n"
