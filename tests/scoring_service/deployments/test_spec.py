"""Deployment files: the static checks, sticky assignment and the ensemble rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scoring_service.deployments.spec import (
    DeploymentInvalid,
    assign,
    combine,
    load_deployment,
    parse_deployment,
    single_model,
)

GOOD = {
    "name": "fraud v2 with a v3 canary",
    "sticky_field": "card_id",
    "salt": "2026-11",
    "champion": {"name": "champion", "package": "fraud_model/v2", "weight": 0.8},
    "challengers": [
        {"name": "v3", "package": "fraud_model/v3", "weight": 0.15},
        {"name": "blend", "ensemble": "blend", "weight": 0.05},
    ],
    "shadows": [{"name": "v3-shadow", "package": "fraud_model/v3"}],
    "fallback": [{"name": "request-only", "package": "fraud_model/v1"}],
    "ensembles": {
        "blend": {
            "members": [{"package": "fraud_model/v2"}, {"package": "fraud_model/v3"}],
            "rule": "weighted_mean",
            "thresholds": {"suspicious": 0.3, "highly_suspicious": 0.8},
        }
    },
}


def with_(**changes: object) -> dict:
    return {**GOOD, **changes}


def test_a_good_deployment_lists_its_packages_once() -> None:
    spec = parse_deployment(GOOD)
    assert [v.name for v in spec.variants] == ["champion", "v3", "blend"]
    assert spec.packages() == ["fraud_model/v2", "fraud_model/v3", "fraud_model/v1"]


def test_load_from_yaml(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump(GOOD, sort_keys=False))
    assert load_deployment(path).champion.package == "fraud_model/v2"
    path.write_text("champion: [")
    with pytest.raises(DeploymentInvalid, match="not valid YAML"):
        load_deployment(path)


@pytest.mark.parametrize(
    ("data", "fault"),
    [
        (
            with_(challengers=[{"name": "v3", "package": "fraud_model/v3", "weight": 0.1}]),
            "sum to 0.9, not 1",
        ),
        (
            with_(
                fallback=[
                    {"name": "a", "package": "fraud_model/v1"},
                    {"name": "b", "package": "fraud_model/v1"},
                ]
            ),
            "fallback cycle: fraud_model/v1 appears twice",
        ),
        (
            with_(fallback=[{"name": "a", "package": "fraud_model/v2"}]),
            "fallback cycle: variant champion .* falls back to itself",
        ),
        (with_(shadows=[{"name": "s", "ensemble": "nope"}]), "ensemble 'nope' not declared"),
        (
            with_(champion={"name": "champion", "package": "fraud_model", "weight": 0.8}),
            "not a package reference",
        ),
        (with_(shadows=[{"name": "v3", "package": "fraud_model/v3"}]), "repeated: \\['v3'\\]"),
        (with_(extra_key=1), "extra_key: Extra inputs are not permitted"),
        (
            with_(
                ensembles={
                    "blend": {
                        "members": [{"package": "fraud_model/v2"}],
                        "thresholds": {"suspicious": 0.3},
                    }
                }
            ),
            "at least 2 items",
        ),
        (
            with_(
                ensembles={
                    "blend": {
                        "members": [{"package": "a/1"}, {"package": "b/1"}],
                        "thresholds": {"suspicious": 1.5},
                    }
                }
            ),
            r"must lie in \[0, 1\]",
        ),
    ],
)
def test_faults_are_refused_naming_them(data: dict, fault: str) -> None:
    with pytest.raises(DeploymentInvalid, match=fault):
        parse_deployment(data)


def test_shares_follow_the_weights_over_20000_cards() -> None:
    cards = [f"card_{i:07d}" for i in range(20_000)]
    chosen = assign(cards, [0.8, 0.15, 0.05], salt="2026-11")
    shares = np.bincount(chosen, minlength=3) / len(cards)
    assert np.all(np.abs(shares - [0.8, 0.15, 0.05]) <= 0.015), shares


def test_assignment_is_sticky_and_depends_on_the_salt() -> None:
    cards = [f"card_{i}" for i in range(1000)]
    first = assign(cards, [0.5, 0.5], salt="a")
    assert all(np.array_equal(first, assign(cards, [0.5, 0.5], salt="a")) for _ in range(100))
    assert not np.array_equal(first, assign(cards, [0.5, 0.5], salt="b"))
    # A missing field goes to the champion; a weight of 0 gets nobody.
    assert assign([None, None], [0.5, 0.5], "a").tolist() == [0, 0]
    assert 1 not in assign(cards, [1.0, 0.0], "a")


def test_ensemble_rules() -> None:
    scores = np.array([[0.2, 0.6], [0.9, 0.1], [0.5, np.nan]])
    np.testing.assert_allclose(combine("weighted_mean", scores, [1, 3])[:2], [0.5, 0.3])
    np.testing.assert_allclose(combine("max", scores, [1, 1])[:2], [0.6, 0.9])
    assert np.isnan(combine("weighted_mean", scores, [1, 1])[2])


def test_single_model_deployment() -> None:
    spec = single_model("fraud_model/v1", "card_id")
    assert spec.champion.weight == 1.0 and spec.packages() == ["fraud_model/v1"]


FAMILY = {
    "segment_field": "card_country",
    "default": "fraud_model/v1-by-country",
    "members": {"US": "fraud_model/v1-by-country-US", "GB": "fraud_model/v1-by-country-GB"},
}


def test_a_family_variant_loads_its_default_at_start_and_its_members_on_demand() -> None:
    spec = parse_deployment(
        with_(
            challengers=[{"name": "by-country", "family": "countries", "weight": 0.2}],
            champion={"name": "champion", "package": "fraud_model/v2", "weight": 0.8},
            families={"countries": FAMILY},
        )
    )
    assert spec.challengers[0].source == "family:countries"
    assert "fraud_model/v1-by-country" in spec.packages()
    assert not set(FAMILY["members"].values()) & set(spec.packages())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "fault"),
    [
        (
            with_(
                challengers=[{"name": "x", "family": "nope", "weight": 0.2}],
                champion={"name": "champion", "package": "fraud_model/v2", "weight": 0.8},
            ),
            "names a family 'nope' not declared",
        ),
        (
            with_(shadows=[{"name": "s", "family": "countries"}], families={"countries": FAMILY}),
            "a family answers variants, not shadows",
        ),
        (
            with_(families={"countries": {**FAMILY, "members": {"US": FAMILY["default"]}}}),
            "the default member is also a segment's member",
        ),
        (
            with_(
                challengers=[{"name": "x", "family": "countries", "package": "a/b", "weight": 0.2}],
                families={"countries": FAMILY},
            ),
            "give exactly one of `package`, `ensemble`, `family` or `online`",
        ),
        (
            with_(families={"countries": {**FAMILY, "segment_feature": "card_txn_count_24h"}}),
            "a family names one of segment_field and segment_feature",
        ),
        (
            with_(families={"countries": {**FAMILY, "segment_field": None}}),
            "a family names one of segment_field and segment_feature",
        ),
    ],
)
def test_family_faults_are_refused_naming_them(data: dict, fault: str) -> None:
    with pytest.raises(DeploymentInvalid, match=fault):
        parse_deployment(data)


def test_an_online_learner_is_a_challenger_or_a_shadow_beside_the_batch_champion() -> None:
    spec = parse_deployment(
        with_(
            champion={"name": "champion", "package": "fraud_model/v2", "weight": 0.9},
            challengers=[{"name": "learner", "online": "fraud_online", "weight": 0.1}],
            shadows=[{"name": "learner-shadow", "online": "fraud_online"}],
        )
    )
    assert spec.challengers[0].source == "online:fraud_online"
    assert spec.online_learners() == ["fraud_online"]
    # Its base package is read from its snapshot when the deployment loads, not declared.
    assert not [p for p in spec.packages() if "online" in p]


@pytest.mark.parametrize(
    ("data", "fault"),
    [
        (
            with_(
                champion={"name": "champion", "online": "fraud_online", "weight": 1.0},
                challengers=[],
            ),
            "never as the champion",
        ),
        (
            with_(shadows=[{"name": "s", "online": "fraud_online", "package": "a/b"}]),
            "give exactly one of",
        ),
        (with_(shadows=[{"name": "s", "online": "../escape"}]), "online"),
    ],
)
def test_online_learner_faults_are_refused_naming_them(data: dict, fault: str) -> None:
    with pytest.raises(DeploymentInvalid, match=fault):
        parse_deployment(data)
