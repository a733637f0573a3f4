"""One heatmap as a standalone SVG document, for the PDF report (WeasyPrint draws it).

Takes the dict of `audits.charts.Chart.as_json()` and colours it the way static/js/charts.js
colours the page: the same stops (ColorBrewer PuOr, diverging and centred on the chart's
`centre` with a symmetric range; light-to-orange over 0..1 for sequential rates), linear
in RGB between stops as Plotly does. Cells with too few items are grey and labelled with
their count; cells without items are only outlined. Text widths are estimated (0.6 x the
font size per character), so margins are generous rather than exact. Standard library only.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

Stops = Sequence[tuple[float, str]]
DIVERGING: Stops = (
    (0.0, "#b35806"),
    (0.25, "#f1a340"),
    (0.5, "#f7f7f7"),
    (0.75, "#998ec3"),
    (1.0, "#542788"),
)
SEQUENTIAL: Stops = ((0.0, "#fff7ec"), (0.5, "#fdae6b"), (1.0, "#a63603"))
FEW_FILL = "#c8c8c8"
BLANK_STROKE = "#d9d9d9"
FONT = "DejaVu Sans, sans-serif"
SIZE = 11  # font size of labels, px
CELL_HEIGHT = 22
CHAR = 0.6  # estimated character width, as a share of the font size
PAD = 8
LEGEND_SEGMENTS = 48
SLANT = math.cos(math.radians(45))  # column labels are rotated -45 degrees
PERCENT_UNITS = {"share", "rate", "fraction", "proportion"}


def heatmap_svg(chart: dict, width: int = 680) -> str:
    """The chart as an SVG document `width` px wide; its height follows the rows."""
    rows, columns, counts, few, z = (chart[k] for k in ("rows", "columns", "n", "few", "z"))
    if not rows or not columns or not any(n for row in counts for n in row):
        return _document(width, 40, [_text(PAD, 24, chart.get("empty") or "No data.")], chart)
    unit = chart.get("unit") or ""
    values = [
        v for i, vs in enumerate(z) for j, v in enumerate(vs) if v is not None and not few[i][j]
    ]
    if chart["scale"] == "sequential":
        stops, lo, hi = SEQUENTIAL, 0.0, 1.0
    else:
        spread = max([1e-6, *(abs(v - chart["centre"]) for v in values)])
        stops, lo, hi = DIVERGING, chart["centre"] - spread, chart["centre"] + spread

    row_labels, col_labels = [_words(r) for r in rows], [_words(c) for c in columns]
    n = len(columns)
    left = PAD + max(_width(s) for s in [*row_labels, chart.get("row_title") or ""]) + 6
    overhang = [(_width(s) + SIZE) * SLANT for s in col_labels]  # rotated label, with glyphs
    top = PAD + (SIZE + 8 if chart.get("column_title") else 0) + max(overhang)
    area = width - left  # grid plus right margin; the right margin lets the last labels fit
    right = max(
        [PAD]
        + [(o + PAD - (n - j - 0.5) / n * area) / ((j + 0.5) / n) for j, o in enumerate(overhang)]
    )
    cw = max((area - right) / n, 6.0)
    value_size = max(6.0, min(SIZE - 1.0, (cw - 4) / (CHAR * 6)))

    parts = []
    if chart.get("column_title"):
        parts.append(
            _text(left + cw * n / 2, PAD + SIZE, chart["column_title"], "middle", bold=True)
        )
    if chart.get("row_title"):
        parts.append(_text(left - 6, top - 4, chart["row_title"], "end", bold=True))
    for j, label in enumerate(col_labels):
        x, y = left + (j + 0.5) * cw, top - 4
        parts.append(_text(x, y, label, transform=f"rotate(-45 {x:.1f} {y:.1f})"))
    for i, label in enumerate(row_labels):
        y = top + i * CELL_HEIGHT
        parts.append(_text(left - 6, y + CELL_HEIGHT / 2 + SIZE * 0.35, label, "end"))
        for j in range(n):
            x = left + j * cw
            box = f'x="{x + 1:.1f}" y="{y + 1:.1f}" width="{cw - 2:.1f}" height="{CELL_HEIGHT - 2}"'
            if few[i][j]:
                kind, fill, text = "few", FEW_FILL, f"n={counts[i][j]}"
            elif counts[i][j] and z[i][j] is not None:
                t = (z[i][j] - lo) / (hi - lo)
                kind, fill, text = "cell", colour(t, stops), _format(z[i][j], unit)
            else:
                parts.append(f'<rect class="blank" {box} fill="none" stroke="{BLANK_STROKE}"/>')
                continue
            parts.append(f'<rect class="{kind}" {box} fill="{fill}"/>')
            ty = y + CELL_HEIGHT / 2 + value_size * 0.35
            parts.append(_text(x + cw / 2, ty, text, "middle", ink(fill), value_size))

    y = top + len(rows) * CELL_HEIGHT + 8
    if values:  # as on the page, no scale when no cell is coloured
        caption = chart.get("label") or ""
        caption += f" ({unit})" if unit and unit not in caption else ""
        caption += " · lower is better" if chart.get("lower_is_better") else ""
        caption += " · provisional" if chart.get("provisional") else ""
        for line in textwrap.wrap(caption, max(10, int((width - 2 * PAD) / (CHAR * SIZE)))):
            y += SIZE + 4
            parts.append(_text(PAD, y, line))
        bar = min(240.0, width - 2 * PAD)
        # The bar is drawn as narrow segments rather than an SVG gradient, which WeasyPrint 70
        # left blank.
        step = bar / LEGEND_SEGMENTS
        parts.extend(
            f'<rect class="legend-step" x="{PAD + k * step:.2f}" y="{y + 6}" '
            f'width="{step + 0.3:.2f}" height="10" fill="{colour(t, stops)}"/>'
            for k, t in enumerate(k / (LEGEND_SEGMENTS - 1) for k in range(LEGEND_SEGMENTS))
        )
        parts.append(
            f'<rect class="legend" x="{PAD}" y="{y + 6}" width="{bar:.1f}" height="10" '
            'fill="none" stroke="#999999"/>'
        )
        y += 16 + SIZE + 4
        ends = (
            (PAD, lo, "start"),
            (PAD + bar / 2, (lo + hi) / 2, "middle"),
            (PAD + bar, hi, "end"),
        )
        parts.extend(_text(x, y, _format(v, unit), anchor) for x, v, anchor in ends)
    return _document(width, math.ceil(y + PAD), parts, chart)


def colour(t: float, stops: Stops) -> str:
    """The scale's colour at `t` (clamped to 0..1), linear in RGB between stops."""
    t = min(1.0, max(0.0, t))
    for (t0, c0), (t1, c1) in zip(stops, stops[1:], strict=False):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            rgb = (round(a + (b - a) * f) for a, b in zip(_rgb(c0), _rgb(c1), strict=True))
            return "#{:02x}{:02x}{:02x}".format(*rgb)
    return stops[-1][1]


def luminance(hex_colour: str) -> float:
    """WCAG 2 relative luminance of "#rrggbb"."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in _srgb(hex_colour)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two colours, 1 to 21."""
    la, lb = sorted((luminance(a), luminance(b)))
    return (lb + 0.05) / (la + 0.05)


def ink(fill: str) -> str:
    """Black or white, whichever contrasts more with `fill`."""
    return "#000000" if contrast(fill, "#000000") >= contrast(fill, "#ffffff") else "#ffffff"


def _rgb(hex_colour: str) -> list[int]:
    return [int(hex_colour[k : k + 2], 16) for k in (1, 3, 5)]


def _srgb(hex_colour: str) -> list[float]:
    return [c / 255 for c in _rgb(hex_colour)]


def _format(value: float, unit: str) -> str:
    words = unit.lower().split()
    if words and words[0] in PERCENT_UNITS:  # "share", "share won", "rate": a percentage
        return f"{round(value * 100):d}%"
    return f"{round(value, 2) + 0.0:.2f}"  # + 0.0 turns -0.0 into 0.0


def _words(s: str) -> str:
    return str(s).replace("_", " ")


def _width(s: str, size: float = SIZE) -> float:
    return len(s) * CHAR * size


def _text(x, y, s, anchor="start", fill="#000000", size=SIZE, bold=False, transform="") -> str:
    extra = (' font-weight="bold"' if bold else "") + (
        f' transform="{transform}"' if transform else ""
    )
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size:.1f}" text-anchor="{anchor}" '
        f'fill="{fill}"{extra}>{escape(str(s))}</text>'
    )


def _document(width: float, height: float, parts: list[str], chart: dict) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" font-family={quoteattr(FONT)}>'
        f"<title>{escape(str(chart.get('title') or ''))}</title>{''.join(parts)}</svg>"
    )
