"""``python -m feature_pipelines.credit``: the credit domain's pipeline commands."""

from feature_pipelines.credit.cli import app

app()
