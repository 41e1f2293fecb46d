"""The routes' dependencies: the app's settings, guard and live scorer, and the one override
hook tests and the pure-ASGI endpoints share."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import get_args

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.requests import Request

from scoring_service.api.app import create_app
from scoring_service.api.deps import (
    NOT_READY,
    GuardDep,
    ScorerDep,
    SettingsDep,
    get_guard,
    get_scorer,
    get_settings,
    live_scorer,
)
from scoring_service.core.errors import NotReady
from tests.fixtures.service import settings_for


def request_to(app: FastAPI) -> Request:
    return Request({"type": "http", "app": app, "method": "GET", "path": "/", "headers": []})


def test_the_aliases_name_their_dependency() -> None:
    aliases = [(SettingsDep, get_settings), (ScorerDep, get_scorer), (GuardDep, get_guard)]
    for alias, dependency in aliases:
        assert get_args(alias)[1].dependency is dependency


def test_the_scorer_is_the_live_one_and_not_ready_outside_the_lifespan(
    sqlite_repo: Path, model_root: Path
) -> None:
    app = create_app(settings_for(sqlite_repo, model_root))
    request = request_to(app)
    assert asyncio.run(get_settings(request)) is app.state.settings
    assert asyncio.run(get_guard(request)) is app.state.guard
    with pytest.raises(NotReady) as refused:
        asyncio.run(get_scorer(request))
    assert (refused.value.status_code, refused.value.code) == (503, "not_ready")
    assert refused.value.message == NOT_READY
    with pytest.raises(NotReady):
        live_scorer(app)

    with TestClient(app):
        scorer = app.state.primary.scorer
        assert scorer is not None
        assert asyncio.run(get_scorer(request)) is scorer
        assert live_scorer(app) is scorer
        assert live_scorer(app, app.state.domains["fraud"]) is scorer
        # An override of get_scorer reaches the endpoints served without injection too.
        stand_in = object()
        app.dependency_overrides[get_scorer] = lambda: stand_in
        try:
            assert live_scorer(app) is stand_in
        finally:
            app.dependency_overrides.clear()
        assert live_scorer(app) is scorer

    with pytest.raises(NotReady):  # the lifespan closed the domain
        asyncio.run(get_scorer(request))


def test_an_app_without_domains_has_no_scorer() -> None:
    with pytest.raises(NotReady, match="starting or stopping"):
        asyncio.run(get_scorer(request_to(FastAPI())))
