"""HTML and Markdown for the report's sections.

The HTML page is self-contained (figures, videos and posters embedded as base64 data URIs, no
scripts, nothing fetched); the Markdown links the PNG and MP4 files written beside it.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

from trpo_pipeline.report.tables import Table

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:#1d2330;max-width:1280px;margin:0 auto;padding:24px 32px 64px;line-height:1.45}
h1{font-size:26px;margin:0 0 4px} h2{font-size:19px;margin:36px 0 8px;
 border-bottom:1px solid #d8dce3;padding-bottom:4px}
.meta{color:#5b6475;font-size:13px} .note{color:#5b6475;font-size:13px;margin:4px 0 10px}
figure{margin:8px 0 20px} figure img{width:100%;height:auto;border:1px solid #e3e6ea}
figure video{max-width:100%;border:1px solid #e3e6ea}
figcaption{color:#5b6475;font-size:13px;margin-top:4px}
.scroll{overflow-x:auto} table{border-collapse:collapse;font-size:13px;margin:6px 0 14px}
th,td{padding:5px 10px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top;
 white-space:nowrap} thead th{background:#f3f5f8;font-weight:600;white-space:normal;
 vertical-align:bottom} tbody th{font-weight:600}
nav{font-size:13px;margin:10px 0 0} .facts{font-size:13px} .facts span{margin-right:14px;
 white-space:nowrap}
tbody tr:nth-child(even){background:#fafbfc} td.num{text-align:right;
 font-variant-numeric:tabular-nums} code,td.code{font-family:ui-monospace,SFMono-Regular,
 Menlo,Consolas,monospace;font-size:12px} .sw{display:inline-block;width:10px;height:10px;
 border-radius:2px;margin-right:6px} a{color:#0b5cad} details summary{cursor:pointer}
"""


def _html_table(table: Table, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = []
    for i, row in enumerate(table.rows):
        cells = []
        for j, text in enumerate(row):
            content = html.escape(text)
            if (i, j) in table.links:
                content = f'<a href="{html.escape(table.links[(i, j)])}">{content}</a>'
            if j == 0 and table.colors:
                content = f'<span class="sw" style="background:{table.colors[i]}"></span>{content}'
            cls = " ".join(
                [c for c, cols in (("num", table.numeric), ("code", table.code)) if j in cols]
            )
            tag = "th" if j == 0 else "td"
            attrs = (' scope="row"' if j == 0 else "") + (f' class="{cls}"' if cls else "")
            cells.append(f"<{tag}{attrs}>{content}</{tag}>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    lines = [
        "| " + " | ".join(_md_cell(h) for h in table.header) + " |",
        "|" + "|".join("---:" if j in table.numeric else "---" for j in range(len(table.header)))
        + "|",
    ]  # fmt: skip
    for i, row in enumerate(table.rows):
        cells = []
        for j, text in enumerate(row):
            cell = f"`{_md_cell(text)}`" if j in table.code and text != "—" else _md_cell(text)
            if (i, j) in table.links:
                cell = f"[{cell}]({table.links[(i, j)]})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Clip:
    """A video shown in a section: files relative to the report's folder."""

    label: str
    video: str  # an MP4
    poster: str | None = None  # a PNG shown before playing


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _html_clip(clip: Clip, media: dict[str, bytes]) -> str:
    poster = f' poster="{_data_uri("image/png", media[clip.poster])}"' if clip.poster else ""
    return (
        f'<figure><video controls preload="metadata"{poster} '
        f'src="{_data_uri("video/mp4", media[clip.video])}"></video>'
        f"<figcaption>{html.escape(clip.label)}</figcaption></figure>"
    )


@dataclass(frozen=True)
class Section:
    anchor: str
    title: str
    intro: str = ""  # plain text
    figure: str | None = None  # a PNG file name
    caption: str = ""
    tables: list[tuple[str, Table]] = field(default_factory=list)  # (sub-heading, table)
    code: str | None = None  # a command to show
    collapsed: bool = False
    facts: dict[str, str] = field(default_factory=dict)  # "name: value" pairs shown on one line
    facts_title: str = ""
    clips: list[Clip] = field(default_factory=list)


def html_page(
    title: str,
    meta: list[str],
    sections: list[Section],
    pngs: dict[str, bytes],
    media: dict[str, bytes] | None = None,
) -> str:
    """The page; ``media`` holds the bytes of the clips' files, by their relative path."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request: the page fetches nothing
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *(f'<div class="meta">{html.escape(m)}</div>' for m in meta),
        "<nav>"
        + " · ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
        + "</nav>",
    ]
    for s in sections:
        parts.append(f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>')
        if s.facts:
            items = "".join(
                f"<span><b>{html.escape(k)}</b> <code>{html.escape(v)}</code></span>"
                for k, v in s.facts.items()
            )
            parts.append(f'<p class="facts">{html.escape(s.facts_title)}: {items}</p>')
        if s.intro:
            parts.append(f'<p class="note">{html.escape(s.intro)}</p>')
        if s.code:
            parts.append(f"<p><code>{html.escape(s.code)}</code></p>")
        if s.figure:
            data = base64.b64encode(pngs[s.figure]).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(s.title)}">'
                f"<figcaption>{html.escape(s.caption)}</figcaption></figure>"
            )
        parts.extend(_html_clip(clip, media or {}) for clip in s.clips)
        for sub, table in s.tables:
            body = _html_table(table, f"{s.anchor}-{len(parts)}")
            if s.collapsed:
                parts.append(f"<details><summary>{html.escape(sub)}</summary>{body}</details>")
            else:
                parts.append((f"<h3>{html.escape(sub)}</h3>" if sub else "") + body)
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def markdown(title: str, meta: list[str], sections: list[Section]) -> str:
    out = [f"# {title}", "", *(f"{m}  " for m in meta), ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        if s.facts:
            out += [f"{s.facts_title}: " + ", ".join(f"{k} `{v}`" for k, v in s.facts.items()), ""]
        if s.intro:
            out += [s.intro, ""]
        if s.code:
            out += [f"`{s.code}`", ""]
        if s.figure:
            out += [f"![{s.title}]({s.figure})", "", f"*{s.caption}*", ""]
        for clip in s.clips:
            shown = f"![{clip.label}]({clip.poster})" if clip.poster else clip.label
            out += [f"[{shown}]({clip.video})", "", f"*{clip.label}* ([MP4]({clip.video}))", ""]
        for sub, table in s.tables:
            if sub:
                out += [f"**{sub}**", ""]
            out += [_md_table(table), ""]
    return "\n".join(out)
