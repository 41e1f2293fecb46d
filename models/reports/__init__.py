"""The reports of the model lifecycle, each one self-contained HTML page.

- ``training``: the training report of a package (``report.html``), built on its holdout rows
  from what ``inputs`` reads (holdout split, segment columns, the previous version);
  ``publish`` puts it into the package and republishes the package atomically;
- ``monitoring``: the delayed-label monitor's ``monitor.json`` and ``monitor.html``
  (the numbers are ``models.monitor``'s);
- shared by both: ``tables`` (which labels alert, per-threshold and per-segment figures),
  ``figures`` (the matplotlib figures) and ``html`` (cells, tables, inline images, the JSON
  data island).

The helpers both reports share are re-exported here.
"""

from models.reports.figures import png_base64
from models.reports.html import data_island, figure, fmt, json_safe, table
from models.reports.tables import alerting_labels

__all__ = ["alerting_labels", "data_island", "figure", "fmt", "json_safe", "png_base64", "table"]
