"""audits.svg: a heatmap as a standalone SVG for the PDF report, coloured like charts.js."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from audits.charts import Cell, Chart
from audits.svg import (
    CHAR,
    DIVERGING,
    FEW_FILL,
    LEGEND_SEGMENTS,
    SEQUENTIAL,
    contrast,
    heatmap_svg,
)

NS = "{http://www.w3.org/2000/svg}"
TRAITS = ["truthfulness", "openness_to_correction", "humility"]
DOMAINS = ["health", "personal_finance", "customer_service", "law"]


@pytest.fixture(autouse=True)
def _min_items(settings):
    settings.KEEL_MIN_CELL_ITEMS = 3


def make(cells: dict, rows=TRAITS, columns=DOMAINS, **fields) -> dict:
    """A chart's JSON, as the page and the report get it; cells map (row, column) to
    (value, n)."""
    defaults = dict(
        name="traits-domains",
        title="Benefit by trait and domain",
        label="Mean calibrated margin (nats)",
        row_title="trait",
        column_title="domain",
        scale="diverging",
    )
    chart = Chart(
        rows=list(rows),
        columns=list(columns),
        cells={k: Cell(v, None, None, n) for k, (v, n) in cells.items()},
        **{**defaults, **fields},
    )
    return chart.as_json()


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # noqa: S314 (our own output)


def rects(root: ET.Element, kind: str) -> list[ET.Element]:
    return [r for r in root.iter(f"{NS}rect") if r.get("class") == kind]


def texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{NS}text")]


def fill_of(root: ET.Element, label: str) -> str:
    """The fill of the cell whose text is `label` (each cell's text follows its rect)."""
    children = list(root)
    for i, child in enumerate(children):
        if (
            child.tag == f"{NS}text"
            and child.text == label
            and i
            and children[i - 1].tag == (f"{NS}rect")
        ):
            return children[i - 1].get("fill")
    raise AssertionError(f"no cell labelled {label!r}")


def test_every_cell_gets_exactly_one_rect_coloured_grey_or_blank():
    cells = {
        ("truthfulness", "health"): (0.3, 40),
        ("truthfulness", "law"): (-0.2, 12),
        ("humility", "personal_finance"): (0.1, 2),  # too few
        ("openness_to_correction", "customer_service"): (0.0, 1),  # too few
        ("humility", "health"): (0.05, 3),  # exactly enough
    }
    root = parse(heatmap_svg(make(cells)))
    assert len(rects(root, "cell")) == 3
    assert len(rects(root, "few")) == 2
    assert len(rects(root, "blank")) == len(TRAITS) * len(DOMAINS) - 5
    assert {r.get("fill") for r in rects(root, "blank")} == {"none"}
    assert {r.get("fill") for r in rects(root, "few")} == {FEW_FILL}


def test_diverging_scale_is_symmetric_about_the_centre_as_on_the_page():
    cells = {
        ("truthfulness", "health"): (0.0, 20),  # centre: the middle colour
        ("truthfulness", "law"): (0.8, 20),  # largest distance: the end colour
        ("humility", "health"): (-0.4, 20),  # half way down: the next stop
        ("humility", "law"): (-9.0, 2),  # too few: grey, and not part of the range
    }
    data = make(cells)
    root = parse(heatmap_svg(data))
    assert fill_of(root, "0.00") == DIVERGING[2][1] == "#f7f7f7"
    assert fill_of(root, "0.80") == DIVERGING[-1][1] == "#542788"
    assert fill_of(root, "-0.40") == DIVERGING[1][1] == "#f1a340"
    assert fill_of(root, "n=2") == FEW_FILL
    # the legend runs from centre - spread to centre + spread
    assert texts(root)[-3:] == ["-0.80", "0.00", "0.80"]
    assert "-9.00" not in texts(root)


def test_accuracy_is_centred_on_one_half_and_printed_as_a_percentage():
    cells = {
        ("truthfulness", "health"): (0.5, 20),
        ("truthfulness", "law"): (0.1, 20),
        ("humility", "law"): (0.7, 20),
    }
    data = make(cells, centre=0.5, unit="share won", label="Accuracy (calibrated)")
    root = parse(heatmap_svg(data))
    assert fill_of(root, "50%") == "#f7f7f7"
    assert fill_of(root, "10%") == "#b35806"
    assert fill_of(root, "70%") == "#998ec3"
    assert "Accuracy (calibrated) (share won)" in texts(root)
    assert texts(root)[-3:] == ["10%", "50%", "90%"]


def test_sequential_rates_run_from_zero_to_one_and_say_lower_is_better():
    cells = {
        ("truthfulness", "health"): (0.0, 20),
        ("truthfulness", "law"): (0.5, 20),
        ("humility", "law"): (1.0, 20),
    }
    data = make(
        cells, scale="sequential", unit="share", lower_is_better=True, label="Misaligned wins"
    )
    root = parse(heatmap_svg(data))
    assert fill_of(root, "0%") == SEQUENTIAL[0][1]
    assert fill_of(root, "50%") == SEQUENTIAL[1][1]
    assert fill_of(root, "100%") == SEQUENTIAL[2][1]
    assert any("lower is better" in t for t in texts(root))
    assert texts(root)[-3:] == ["0%", "50%", "100%"]


def test_a_cell_with_too_few_items_is_grey_and_labelled_with_its_count():
    root = parse(heatmap_svg(make({("humility", "law"): (0.42, 2)})))
    (rect,) = rects(root, "few")
    assert rect.get("fill") == FEW_FILL
    assert fill_of(root, "n=2") == FEW_FILL
    assert "0.42" not in texts(root)
    # nothing is coloured, so there is no colour scale either (as on the page)
    assert rects(root, "cell") == [] and rects(root, "legend") == []


def test_values_keep_two_decimals_in_nats_and_unknown_units():
    cells = {("truthfulness", "health"): (0.123, 9), ("humility", "law"): (-0.001, 9)}
    assert {"0.12", "0.00"} <= set(texts(parse(heatmap_svg(make(cells)))))
    other = texts(parse(heatmap_svg(make(cells, unit="points"))))
    assert {"0.12", "0.00"} <= set(other) and "-0.00" not in other


def test_text_is_escaped():
    cells = {("<&>", "health"): (0.2, 9), ('a "b"', "law"): (0.1, 9)}
    data = make(cells, rows=["<&>", 'a "b"'], title="</svg><script>", label="x < y & z")
    svg = heatmap_svg(data)
    root = parse(svg)
    assert "<&>" in texts(root) and 'a "b"' in texts(root)
    assert root.find(f"{NS}title").text == "</svg><script>"
    assert "<script" not in svg
    assert any(t.startswith("x < y & z") for t in texts(root))


def _label_box(text: ET.Element) -> tuple[float, float, float]:
    """Anchor x, anchor y and the estimated advance of a rotated column label."""
    match = re.fullmatch(r"rotate\(-45 ([\d.]+) ([\d.]+)\)", text.get("transform"))
    assert (
        match
        and float(text.get("x")) == float(match[1])
        and float(text.get("y")) == float(match[2])
    )
    return float(match[1]), float(match[2]), len(text.text) * CHAR * float(text.get("font-size"))


@pytest.mark.parametrize("width", [680, 420])
def test_column_labels_fit_inside_the_view_box_when_rotated(width):
    columns = ["health", "law", "personal_finance_and_retirement_planning"]
    root = parse(heatmap_svg(make({("humility", "law"): (0.2, 9)}, columns=columns), width))
    _, _, box_width, box_height = map(float, root.get("viewBox").split())
    assert box_width == width
    rotated = [t for t in root.iter(f"{NS}text") if t.get("transform")]
    assert [t.text for t in rotated] == [
        "health",
        "law",
        "personal finance and retirement planning",
    ]
    size = float(rotated[0].get("font-size"))
    for text in rotated:
        x, y, advance = _label_box(text)
        end_x, end_y = x + advance * math.cos(math.pi / 4), y - advance * math.sin(math.pi / 4)
        # the end of the baseline, and the top of the glyphs above it
        assert 0 <= end_x <= box_width
        assert 0 <= end_y - size * math.sin(math.pi / 4) <= box_height
    # and the grid stays inside too
    for rect in rects(root, "cell") + rects(root, "blank"):
        assert float(rect.get("x")) + float(rect.get("width")) <= box_width


def test_row_labels_fit_at_the_left():
    rows = ["a", "openness_to_correction_and_other_long_names"]
    root = parse(heatmap_svg(make({("a", "law"): (0.2, 9)}, rows=rows)))
    (label,) = [
        t for t in root.iter(f"{NS}text") if t.text == "openness to correction and other long names"
    ]
    assert label.get("text-anchor") == "end"
    assert float(label.get("x")) - len(label.text) * CHAR * float(label.get("font-size")) >= 0
    assert float(label.get("x")) < min(float(r.get("x")) for r in rects(root, "cell"))


def test_height_follows_the_rows():
    few_rows = parse(heatmap_svg(make({("a", "law"): (0.2, 9)}, rows=["a", "b"])))
    many = parse(heatmap_svg(make({("a", "law"): (0.2, 9)}, rows=list("abcdefghij"))))
    assert float(many.get("height")) - float(few_rows.get("height")) == pytest.approx(8 * 22, abs=1)


@pytest.mark.parametrize(
    "data",
    [
        make({}, rows=[], empty="Cells appear as items are scored."),
        make({}, empty="Cells appear as items are scored."),  # rows, but every n is 0
        make(
            {("humility", "law"): (0.2, 9)}, columns=[], empty="Cells appear as items are scored."
        ),
    ],
)
def test_an_empty_chart_shows_its_message(data):
    root = parse(heatmap_svg(data))
    assert texts(root) == ["Cells appear as items are scored."]
    assert list(root.iter(f"{NS}rect")) == []
    assert root.get("width") == "680"


@pytest.mark.parametrize("scale", ["diverging", "sequential"])
def test_cell_text_contrasts_with_its_fill(scale):
    # values across the whole scale, so every stretch between stops is drawn
    values = (
        [k / 20 for k in range(21)] if scale == "sequential" else [k / 10 for k in range(-10, 11)]
    )
    rows = [f"r{k}" for k in range(len(values))]
    cells = {(r, "law"): (v, 9) for r, v in zip(rows, values, strict=True)}
    cells[("r0", "health")] = (0.5, 1)  # and a grey one
    unit = "share" if scale == "sequential" else "nats"
    root = parse(heatmap_svg(make(cells, rows=rows, scale=scale, unit=unit)))
    children = list(root)
    checked = 0
    for i, child in enumerate(children):
        if child.tag == f"{NS}rect" and child.get("class") in ("cell", "few"):
            text = children[i + 1]
            assert text.tag == f"{NS}text"
            assert contrast(child.get("fill"), text.get("fill")) >= 4.5
            assert text.get("fill") in ("#000000", "#ffffff")
            checked += 1
    assert checked == len(values) + 1
    # both inks are used on the diverging scale: its ends are dark
    if scale == "diverging":
        assert {
            children[i + 1].get("fill") for i, c in enumerate(children) if c.get("class") == "cell"
        } == {
            "#000000",
            "#ffffff",
        }


def test_standalone_document_without_scripts_or_external_references():
    svg = heatmap_svg(make({("humility", "law"): (0.2, 9)}))
    root = parse(svg)
    assert root.tag == f"{NS}svg"
    assert root.get("viewBox") == f"0 0 680 {root.get('height')}"
    assert root.get("font-family") == "DejaVu Sans, sans-serif"
    assert "script" not in svg and "http" not in svg.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    assert not [e for e in root.iter() if any(k.endswith("href") for k in e.attrib)]
    # the legend is drawn in segments (no gradient to resolve) running through the stops
    steps = [r.get("fill") for r in rects(root, "legend-step")]
    assert len(steps) == LEGEND_SEGMENTS
    assert steps[0] == DIVERGING[0][1] and steps[-1] == DIVERGING[-1][1]
    middle = steps[LEGEND_SEGMENTS // 2].lstrip("#")
    assert all(int(middle[i : i + 2], 16) >= 0xE0 for i in (0, 2, 4))  # PuOr's pale centre
