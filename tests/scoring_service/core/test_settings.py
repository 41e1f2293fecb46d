"""Settings: one object read from SCORING_* variables, typed and bounded, never echoing a secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from scoring_service.core.security import hash_key
from scoring_service.core.settings import Settings, StoreConnection


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SCORING_* variable of the machine running the tests leaks into them."""
    for name in list(os.environ):
        if name.startswith("SCORING_"):
            monkeypatch.delenv(name)


def test_settings_refuse_a_raw_key_and_do_not_echo_it() -> None:
    with pytest.raises(ValueError, match="64 hex characters") as info:
        Settings(api_key_hashes="my-raw-secret-key")
    assert "my-raw-secret-key" not in str(info.value)
    parsed = Settings(api_key_hashes=f"{hash_key('a')}, {hash_key('b').upper()}")
    assert parsed.api_key_hashes == (hash_key("a"), hash_key("b"))
    assert "api_key_hashes" not in repr(parsed)


def test_every_field_comes_from_its_scoring_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    environment = {
        "SCORING_DOMAINS": "feature_repo/fraud, feature_repo/credit,",
        "SCORING_MODELS": "fraud_model/v2,credit_model/v1",
        "SCORING_DEADLINE_MS": "120",
        "SCORING_OUTAGE_POLICY": "degrade",
        "SCORING_FALLBACK_SCORE": "0.5",
        "SCORING_GC_THRESHOLDS": "[20000, 5, 5]",
        "SCORING_ADMIN_KEY_HASHES": hash_key("admin").upper(),
        "SCORING_PACKAGE_SIGNING_KEY": "release-key",
        "SCORING_NOT_A_SETTING": "ignored",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.domains == (Path("feature_repo/fraud"), Path("feature_repo/credit"))
    assert settings.domain_folders == settings.domains
    assert settings.models == ("fraud_model/v2", "credit_model/v1")
    assert (settings.deadline_ms, settings.outage_policy, settings.fallback_score) == (
        120,
        "degrade",
        0.5,
    )
    assert settings.gc_thresholds == (20_000, 5, 5)
    assert settings.admin_key_hashes == (hash_key("admin"),)
    assert settings.package_signing_key is not None
    assert settings.package_signing_key.get_secret_value() == "release-key"
    assert "release-key" not in repr(settings) and "release-key" not in str(settings)


def test_defaults_serve_the_feature_repo_alone() -> None:
    settings = Settings()
    assert settings.domains == () and settings.domain_folders == (Path("feature_repo/fraud"),)
    assert (settings.model_name, settings.model_version) == (None, "v1")
    assert (settings.deadline_ms, settings.batch_deadline_ms) == (50, 2_000)
    assert settings.outage_policy == "fail" and settings.api_key_hashes == ()
    assert Settings(feature_repo=Path("elsewhere")).domain_folders == (Path("elsewhere"),)


@pytest.mark.parametrize(
    ("field", "value", "fault"),
    [
        ("models", "fraud_model", "'fraud_model' is not a model package of the form name/version"),
        ("models", "fraud_model/v1/x", "is not a model package of the form name/version"),
        ("deadline_ms", 0, "greater than or equal to 1"),
        ("deadline_ms", 60_001, "less than or equal to 60000"),
        ("max_batch_size", 10_001, "less than or equal to 10000"),
        ("feature_store_variant", "Redis-2", "should match pattern"),
        ("outage_policy", "retry", "'fail' or 'degrade'"),
        ("shadow_time_share", 1.5, "less than or equal to 1"),
        ("prediction_log_roll_seconds", 0, "greater than 0"),
    ],
)
def test_values_out_of_bounds_are_refused_naming_the_field(
    field: str, value: object, fault: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(**{field: value})
    (error,) = refused.value.errors()
    assert error["loc"][0] == field
    assert fault in str(refused.value)


def test_refused_values_are_not_echoed() -> None:
    """hide_input_in_errors: a value pasted in the wrong place does not reach the log."""
    with pytest.raises(ValidationError) as refused:
        Settings(deadline_ms="sk_live_secret_in_the_wrong_place")
    assert "sk_live_secret_in_the_wrong_place" not in str(refused.value)


def test_the_store_connection_is_the_store_settings_in_seconds() -> None:
    settings = Settings(store_timeout_ms=250, store_connect_timeout_ms=1_500, store_pool_size=4)
    connection = settings.store_connection
    assert connection == StoreConnection(timeout_s=0.25, connect_timeout_s=1.5, pool_size=4)
    assert connection.redis_py_options() == {
        "socket_timeout": 0.25,
        "socket_connect_timeout": 1.5,
        "max_connections": 4,
        "retry": None,  # fail fast: no retries with backoff past every deadline
    }
    assert "retry" not in connection.redis_py_options("cluster")
    # Clients made without settings connect like a service on the defaults does.
    assert StoreConnection.defaults() == StoreConnection(
        timeout_s=0.05, connect_timeout_s=0.1, pool_size=16
    )
    assert StoreConnection.defaults() == Settings().store_connection
