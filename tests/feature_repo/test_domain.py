"""Domain files: valid ones load; a wrong one is refused with a message naming the fault.

The assembled spec (``feature_repo.domain``); its parts have their own tests: request fields
in ``test_domain_fields.py``, decision rules in ``test_domain_rules.py``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from feature_repo.domain import DomainSpec, DomainSpecError, load_domain

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["fraud", "credit"]


def minimal() -> dict[str, Any]:
    """A small valid domain: one entity, one request feature, three labels."""
    return {
        "name": "claims",
        "resource": "insurance-claims",
        "business_id": "claim_id",
        "model_name": "claims_model",
        "feature_service": "claims_model_v1",
        "training_data": "data/claims.parquet",
        "request_fields": {
            "claim_id": {"kind": "identifier", "description": "Claim id.", "example": "c1"},
            "policy_id": {"kind": "identifier", "description": "Policy id."},
            "claimed": {
                "kind": "number",
                "constraints": {"ge": 0, "le": 1e6},
                "description": "Amount claimed.",
                "example": 120.0,
            },
            "channel": {
                "kind": "category",
                "required": False,
                "constraints": {
                    "values": ["web", "phone", "other"],
                    "unknown": "as_other",
                    "other": "other",
                },
                "description": "Where the claim came in.",
            },
        },
        "entities": {"policy_id": {"join_key": "policy_id", "route": "policies"}},
        "request_features": ["claimed"],
        "label_column": "is_fraudulent",
        "labels": ["pay", "review", "refuse"],
        "threshold_rule": {
            "targets": {
                "review": {"min_precision": 0.3, "fallback_quantile": 0.9},
                "refuse": {"min_precision": 0.8, "fallback_quantile": 0.99},
            }
        },
        "reasons": [
            {"code": "large_claim", "text": "A large claim.", "when": "claimed > 10000"},
        ],
    }


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "domain.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("domain", SHIPPED)
def test_shipped_domains_load(domain: str) -> None:
    spec = load_domain(ROOT / "feature_repo" / domain)
    assert spec.folder == ROOT / "feature_repo" / domain
    assert spec.business_id in spec.request_fields
    assert spec.reasons, "a shipped domain explains its labels"


def test_fraud_domain_is_todays_service() -> None:
    spec = load_domain(ROOT / "feature_repo" / "fraud")
    assert spec.resource == "transactions"
    assert list(spec.request_fields) == [
        "transaction_id",
        "amount",
        "currency",
        "ip_address",
        "card_id",
        "merchant_id",
        "timestamp",
        "card_country",
        "ip_country",
        "merchant_country",
    ]
    assert spec.entity_mapping == {
        "ip_address": "ip_address",
        "card_id": "card_id",
        "merchant_id": "merchant_id",
    }
    assert [e.route for e in spec.entities.values()] == ["ip-addresses", "cards", "merchants"]
    assert spec.request_features == ["amount"]
    assert spec.labels == ["not_fraud", "suspicious", "highly_suspicious"]
    assert spec.report_floor == "highly_suspicious"
    assert [r.code for r in spec.reasons if r.report] == [
        "ip_shared_by_many_cards",
        "ip_has_chargebacks",
        "card_used_from_several_countries",
        "card_used_from_several_ips",
        "card_testing_pattern",
        "merchant_with_high_fraud_rate",
        "amount_far_above_card_usual",
    ]


def test_credit_domain_treats_history_as_optional() -> None:
    spec = load_domain(ROOT / "feature_repo" / "credit")
    assert spec.labels == ["approve", "manual_review", "decline"]
    person = next(e for e in spec.entities.values() if e.join_key == "dob_ssn")
    assert person.join_key in spec.uncertain.optional_entities
    assert person.unknown_reason == "no_credit_history"


def test_load_from_file_or_folder(tmp_path: Path) -> None:
    path = write(tmp_path, minimal())
    by_file, by_folder = load_domain(path), load_domain(tmp_path)
    assert by_file == by_folder
    assert by_folder.training_data_path == tmp_path.resolve() / "data" / "claims.parquet"
    assert by_folder.report_floor == "refuse"
    assert by_folder.threshold_rule.describe().startswith("validation split: refuse = ")


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value


DELETE = object()

# (case, dotted key to change, new value, words the message must contain)
BAD = [
    ("unknown_key", "colour", "blue", ["colour", "Extra inputs are not permitted"]),
    ("missing_key", "label_column", DELETE, ["label_column", "Field required"]),
    ("bad_resource", "resource", "Insurance Claims", ["resource", "should match pattern"]),
    ("business_id_not_field", "business_id", "case_id", ["business_id 'case_id'"]),
    (
        "business_id_not_identifier",
        "business_id",
        "claimed",
        ["business_id 'claimed' must be a required identifier"],
    ),
    ("unknown_kind", "request_fields.claimed.kind", "money", ["request_fields.claimed.kind"]),
    (
        "constraint_for_other_kind",
        "request_fields.claimed.constraints.values",
        ["a"],
        ["request_fields.claimed", "['values'] do not apply to kind number"],
    ),
    (
        "bounds_crossed",
        "request_fields.claimed.constraints.ge",
        2e6,
        ["lower bound 2000000.0 is above upper bound"],
    ),
    (
        "bad_pattern",
        "request_fields.policy_id.constraints",
        {"pattern": "([a-z"},
        ["request_fields.policy_id.constraints.pattern", "not a regular expression"],
    ),
    (
        "category_without_values",
        "request_fields.channel.constraints",
        {"unknown": "refuse"},
        ["request_fields.channel", "a category needs its `values`"],
    ),
    (
        "as_other_without_other",
        "request_fields.channel.constraints.other",
        DELETE,
        ["as_other needs `other`"],
    ),
    (
        "other_not_a_value",
        "request_fields.channel.constraints.other",
        "fax",
        ["other 'fax' is not one of the values"],
    ),
    (
        "bad_unknown_treatment",
        "request_fields.channel.constraints.unknown",
        "guess",
        ["request_fields.channel.constraints.unknown", "'refuse', 'as_missing' or 'as_other'"],
    ),
    (
        "example_out_of_bounds",
        "request_fields.claimed.example",
        -5,
        ["example -5 is refused: must be greater than or equal to 0"],
    ),
    ("entity_not_field", "entities.customer_id", {"join_key": "customer_id"}, ["'customer_id'"]),
    (
        "entity_of_number",
        "entities.claimed",
        {"join_key": "claimed"},
        ["entity field 'claimed' is a number"],
    ),
    ("bad_route", "entities.policy_id.route", "Policies/", ["entities.policy_id.route"]),
    (
        "route_is_resource",
        "entities.policy_id.route",
        "insurance-claims",
        ["entity routes must differ"],
    ),
    (
        "request_feature_not_number",
        "request_features",
        ["channel"],
        ["request feature 'channel' is a category"],
    ),
    ("label_is_field", "label_column", "claimed", ["'claimed' is a request field"]),
    ("labels_repeat", "labels", ["pay", "pay", "refuse"], ["labels repeat"]),
    ("uncertain_is_label", "uncertain_label", "review", ["uncertain_label 'review'"]),
    (
        "targets_not_labels",
        "threshold_rule.targets",
        {"refuse": {"min_precision": 0.8, "fallback_quantile": 0.99}},
        ["must name the labels above the lowest", "['review', 'refuse']"],
    ),
    (
        "targets_not_monotone",
        "threshold_rule.targets.refuse.min_precision",
        0.1,
        ["refuse: min_precision is below that of a less risky label"],
    ),
    (
        "precision_out_of_range",
        "threshold_rule.targets.review.min_precision",
        1.5,
        ["threshold_rule.targets.review.min_precision", "less than or equal to 1"],
    ),
    (
        "required_not_join_key",
        "uncertain",
        {"required_entities": ["customer_id"]},
        ["uncertain.required_entities: ['customer_id'] are not join keys"],
    ),
    (
        "required_and_optional",
        "uncertain",
        {"required_entities": ["policy_id"], "optional_entities": ["policy_id"]},
        ["['policy_id'] are both required and optional"],
    ),
    (
        "report_floor_unknown",
        "uncertain",
        {"report_label_at_or_above": "pay"},
        ["report_label_at_or_above 'pay' must be `never` or one of ['review', 'refuse']"],
    ),
    (
        "bad_condition",
        "reasons.0.when",
        "claimed is huge",
        ["reasons.0.when.0", "'claimed is huge' is not a condition"],
    ),
    (
        "condition_without_value",
        "reasons.0.when",
        {"feature": "claimed", "op": ">"},
        ["`claimed >` needs a finite value"],
    ),
    (
        "reason_codes_repeat",
        "reasons",
        [
            {"code": "large_claim", "text": "a", "when": "claimed > 1"},
            {"code": "large_claim", "text": "b", "when": "claimed > 2"},
        ],
        ["reason codes repeat: ['large_claim']"],
    ),
    (
        "reason_clashes_with_gap",
        "entities.policy_id.missing_reason",
        "large_claim",
        ["reason codes repeat: ['large_claim']"],
    ),
    (
        "feature_text_without_value",
        "features",
        {"claimed": "a large claim"},
        ["features.claimed.text", "does not show the value"],
    ),
    (
        "feature_text_bad_format",
        "features",
        {"claimed": "claimed {value:q}"},
        ["is not a format string of `value`"],
    ),
    ("object_name_not_words", "object_name", "Insurance_Claim", ["object_name"]),
    (
        "segment_bins_on_category",
        "segments",
        [{"name": "by_channel", "field": "channel", "bins": [0, 1]}],
        ["segment by_channel: bins need a number or integer field"],
    ),
]


@pytest.mark.parametrize(("case", "key", "value", "words"), BAD, ids=[c[0] for c in BAD])
def test_bad_domain_is_refused(tmp_path: Path, case: str, key: str, value: Any, words) -> None:
    data = copy.deepcopy(minimal())
    _set(data, key, value)
    path = write(tmp_path, data)
    with pytest.raises(DomainSpecError) as caught:
        load_domain(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    for word in words:
        assert word in message, message


def test_unreadable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DomainSpecError, match="cannot be read"):
        load_domain(tmp_path / "absent.yaml")
    (tmp_path / "domain.yaml").write_text("name: [unclosed\n")
    with pytest.raises(DomainSpecError, match="not valid YAML"):
        load_domain(tmp_path)
    (tmp_path / "domain.yaml").write_text("- a list\n")
    with pytest.raises(DomainSpecError, match="must be a mapping"):
        load_domain(tmp_path)


def test_api_names_and_feature_sentences() -> None:
    spec = DomainSpec.model_validate(
        {
            **minimal(),
            "features": {
                "claimed": "{value:,.0f} claimed",
                "policy_claims_30d": {"text": "{value:g} claims in 30 days", "missing": "new"},
            },
        }
    )
    assert (spec.object_words, spec.schema_name) == ("insurance claim", "InsuranceClaim")
    assert spec.collection_field == "insurance_claims"
    assert "is_fraudulent" in spec.score_meaning
    assert spec.feature_text("claimed", 12000.0) == "12,000 claimed"
    assert spec.feature_text("policy_claims_30d", float("nan")) == "new"
    assert spec.feature_text("claimed", None) == "claimed: unknown"
    assert spec.feature_text("undeclared", 0.25) == "undeclared = 0.25"
    named = DomainSpec.model_validate({**minimal(), "object_name": "claim"})
    assert (named.schema_name, named.collection_field) == ("Claim", "insurance_claims")
    fraud = load_domain(ROOT / "feature_repo" / "fraud")
    assert fraud.schema_name == "Transaction"
    assert fraud.feature_text("card_distinct_countries_24h", 3.0) == (
        "card used from 3 countries in the last 24 h"
    )
    credit = load_domain(ROOT / "feature_repo" / "credit")
    assert credit.schema_name == "LoanApplication"
    assert credit.feature_text("bankruptcies", None) == "no credit history on record"


def test_fraud_reasons_reproduce_the_rules_baseline() -> None:
    """One point per baseline reason: the large-amount rule falls back to 500 without history."""
    spec = load_domain(ROOT / "feature_repo" / "fraud")
    baseline = [r for r in spec.reasons if r.baseline]
    columns = {f: np.array([np.nan, np.nan]) for r in baseline for f in r.features if f != "amount"}
    columns["amount"] = np.array([600.0, 400.0])
    points = sum(r.holds(columns).astype(int) for r in baseline)
    assert points.tolist() == [1, 0]
    usable = spec.reasons_for(["amount", "card_amount_mean_30d"], report=True)
    assert [r.code for r in usable] == ["amount_far_above_card_usual"]
