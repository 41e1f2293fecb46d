from scoring_service.cli import app

app(prog_name="python -m scoring_service")
