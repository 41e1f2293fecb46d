"""The platform on an orchestrator: schedules, triggers, gates and the decision log (Dagster).

``orchestration.definitions.defs`` is what ``dagster dev`` (``make orchestrate``) and the
Kubernetes deployment (infra/orchestration/) load. It sits above every other package and drives
them through their public functions and command lines; nothing imports it (import-linter).
Nothing happens at import but defining.
"""
