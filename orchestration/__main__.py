from orchestration.cli import app

app(prog_name="python -m orchestration")
