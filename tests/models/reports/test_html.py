"""HTML pieces of the reports: cells, tables, inline figures and the JSON data island."""

from __future__ import annotations

import base64
import io
import json
import math
import re

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from models.reports.html import data_island, figure, fmt, json_safe, table


def test_cells_show_four_decimals_and_nan_as_not_available() -> None:
    assert fmt(0.123456) == "0.1235"
    assert fmt(np.float64(2.0)) == "2.0000"
    assert fmt(math.nan) == "n/a"
    assert fmt(12) == "12"
    assert fmt("<b>fraud & co</b>") == "&lt;b&gt;fraud &amp; co&lt;/b&gt;"


def test_json_safe_turns_nan_into_null_and_numpy_into_python() -> None:
    value = {"a": [1.0, math.nan, np.int64(3), (np.float32(0.5),)], 2: {"b": np.float64("nan")}}
    safe = json_safe(value)
    assert safe == {"a": [1.0, None, 3, [0.5]], "2": {"b": None}}
    assert type(safe["a"][2]) is int  # type: ignore[index]
    json.dumps(safe, allow_nan=False)  # strict JSON


def test_a_table_escapes_and_keeps_the_column_order() -> None:
    rows = [{"label": "<suspicious>", "precision": math.nan}, {"precision": 0.5, "label": "x"}]
    page = table(rows, ["label", "precision", "recall"])
    assert "<th>label</th><th>precision</th><th>recall</th>" in page
    assert "<tr><td>&lt;suspicious&gt;</td><td>n/a</td><td></td></tr>" in page
    assert "<tr><td>x</td><td>0.5000</td><td></td></tr>" in page


def _figure() -> Figure:
    fig = Figure(figsize=(4, 3))
    fig.subplots().plot([0, 1], [1, 0])
    return fig


def test_a_figure_is_an_inline_png_with_alt_text_and_caption() -> None:
    page = figure("fig-x", 'ROC "curves"', _figure(), caption="Model <against> rules.")
    match = re.fullmatch(
        r'<figure><img id="fig-x" alt="ROC &quot;curves&quot;" '
        r'src="data:image/png;base64,([A-Za-z0-9+/=]+)">'
        r"<figcaption>Model &lt;against&gt; rules.</figcaption></figure>",
        page,
    )
    assert match is not None, page
    with Image.open(io.BytesIO(base64.b64decode(match.group(1), validate=True))) as image:
        assert image.format == "PNG" and image.size[0] >= 300
    assert "figcaption" not in figure("fig-y", "no caption", _figure())


def test_the_data_island_cannot_be_closed_by_its_content() -> None:
    document = {"note": "</script><script>alert(1)</script>", "psi": math.nan}
    island = data_island("report-data", document)
    assert island.startswith('<script type="application/json" id="report-data">')
    inner = island.removeprefix('<script type="application/json" id="report-data">')
    inner = inner.removesuffix("</script>")
    assert "</" not in inner
    assert json.loads(inner) == {"note": document["note"], "psi": None}
