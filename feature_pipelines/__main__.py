"""Entry point of ``python -m feature_pipelines``."""

from feature_pipelines.cli import app

app()
