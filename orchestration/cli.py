"""Command line of the orchestration: ``python -m orchestration decisions``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from orchestration.decisions import KINDS, Decision, DecisionLog

app = typer.Typer(
    help="The platform's orchestration: the decision log of every run, gate, promotion and "
    "rollback (the schedules, sensors and UI run under `make orchestrate`).",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _main() -> None:
    """Orchestration commands."""


def _line(decision: Decision) -> str:
    outcome = {True: "PASS", False: "STOP" if decision.kind == "verdict" else "FAIL", None: "-"}
    subject = decision.subject
    version = decision.candidate or decision.champion or ""
    return (
        f"{decision.time:%Y-%m-%d %H:%M:%S}  {decision.kind:<9} {outcome[decision.passed]:<4}  "
        f"{subject:<30} {version:<26} {decision.run_id[:8]:<8}  {decision.message}"
    )


@app.command()
def decisions(
    log: Annotated[
        Path, typer.Option(help="The decision log (JSONL).", envvar="ORCHESTRATION_DECISION_LOG")
    ] = Path("data/orchestration/decisions.jsonl"),
    kind: Annotated[
        list[str] | None,
        typer.Option(help=f"Only these kinds (repeatable): {', '.join(KINDS)}."),
    ] = None,
    run: Annotated[str | None, typer.Option(help="Only this run (an id or its prefix).")] = None,
    candidate: Annotated[
        str | None, typer.Option(help="Only this candidate package (name/version).")
    ] = None,
    failed: Annotated[bool, typer.Option(help="Only failed gates and stopped candidates.")] = False,
    last: Annotated[int, typer.Option(min=0, help="The last N records (0: all).")] = 50,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON record a line, with its evidence.")
    ] = False,
) -> None:
    """Every run, gate result, verdict, trigger, promotion and rollback, oldest first."""
    unknown = sorted(set(kind or ()) - set(KINDS))
    if unknown:
        raise typer.BadParameter(f"unknown kind(s) {unknown}; choose from {list(KINDS)}")
    if not log.is_file():
        typer.echo(f"no decisions yet: {log} does not exist", err=True)
        raise typer.Exit(code=1)
    try:
        found = DecisionLog(log).read(
            kinds=kind or None, run_id=run, candidate=candidate, failed_only=failed
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log") from None
    shown = found[-last:] if last else found
    for decision in shown:
        if as_json:
            typer.echo(json.dumps(decision.model_dump(mode="json"), sort_keys=True))
        else:
            typer.echo(_line(decision))
    if not as_json:
        typer.echo(f"{len(shown)} of {len(found)} record(s) from {log}")


@app.command()
def replay(
    root: Annotated[Path, typer.Option(help="An empty folder the replay builds its platform in.")],
    days: Annotated[int, typer.Option(help="Days of history.")] = 60,
    drift_day: Annotated[int, typer.Option(help="Day the new fraud pattern starts.")] = 30,
    rows: Annotated[int, typer.Option(help="Payments in the whole history.")] = 45_000,
    seed: Annotated[int, typer.Option(help="The generator's seed.")] = 7,
    out: Annotated[Path | None, typer.Option(help="Write the report here (JSON).")] = None,
) -> None:
    """Replay the continuous-training loop over a generated history with a new fraud pattern,
    on a simulated clock; print days to detect and to recover and the recalls."""
    import logging

    from orchestration.replay import ReplaySettings
    from orchestration.replay import replay as run_replay

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = ReplaySettings(days=days, drift_day=drift_day, rows=rows, seed=seed)
    report = run_replay(root, settings)
    data = report.as_dict()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=2, default=str) + "\n")
    shown = {k: v for k, v in data.items() if k not in ("days", "settings")}
    typer.echo(json.dumps(shown, indent=2, default=str))
