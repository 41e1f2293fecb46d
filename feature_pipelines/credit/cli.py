"""Command line of the credit domain's pipeline: ``python -m feature_pipelines credit load``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from feature_pipelines.credit.load import DEFAULT_REPO, SOURCE_ENV

app = typer.Typer(
    name="credit",
    help="Credit scoring domain: load Feast's credit-scoring data into the offline store.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """Credit scoring domain: load Feast's credit-scoring data into the offline store."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command("load")
def load_command(
    source: Annotated[
        Path | None,
        typer.Option(
            envvar=SOURCE_ENV,
            help="Folder of the tutorial's files (default: feature_pipelines/credit/source_data, "
            "the copy that ships with the code).",
            show_default=False,
        ),
    ] = None,
    repo: Annotated[
        Path, typer.Option(help="The credit Feast repository; tables go to its data/ folder.")
    ] = DEFAULT_REPO,
) -> None:
    """Clean the loan applications, ZIP codes and credit history; write the offline tables."""
    from feature_pipelines.credit.load import load

    try:
        result = load(source, repo)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(result.summary())
