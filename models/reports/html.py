"""HTML pieces shared by the reports: cells, tables, embedded figures and the data island.

Every report is one self-contained page: figures are PNGs inlined as base64 data URLs, and the
numbers the page shows are also embedded as JSON (``data_island``), so a test or a scraper reads
them without parsing the tables.
"""

from __future__ import annotations

import html
import json
import math

import numpy as np
from matplotlib.figure import Figure

from models.reports.figures import png_base64


def fmt(value: object) -> str:
    """A table cell: floats to four decimals (NaN as ``n/a``), anything else escaped."""
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return html.escape(str(value))


def json_safe(value: object) -> object:
    """NaN (not JSON) as null, numpy scalars as Python numbers, recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def table(rows: list[dict], columns: list[str]) -> str:
    """A table of ``rows`` showing ``columns``, in that order (a missing key: an empty cell)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{fmt(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(fig_id: str, alt: str, fig: Figure, caption: str | None = None) -> str:
    """A figure as an ``img`` with an id and alt text, and its caption when it has one."""
    below = f"<figcaption>{html.escape(caption)}</figcaption>" if caption is not None else ""
    return (
        f'<figure><img id="{fig_id}" alt="{html.escape(alt)}" '
        f'src="data:image/png;base64,{png_base64(fig)}">{below}</figure>'
    )


def data_island(element_id: str, document: object) -> str:
    """A document as an inline JSON ``script`` element (NaN as null; ``</`` cannot close it)."""
    payload = json.dumps(json_safe(document)).replace("</", "<\\/")
    return f'<script type="application/json" id="{element_id}">{payload}</script>'
