"""Reference lists: the currency and country codes the platform accepts.

Countries are checked against an independent copy of ISO 3166-1 (the IANA time zone database's
``iso3166.tab``, shipped with the ``tzdata`` package pandas depends on).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest

from feature_repo.domain import load_domain
from feature_repo.reference import COUNTRIES, COUNTRY_PATTERN, CURRENCIES

ROOT = Path(__file__).resolve().parents[2]


def iana_countries() -> set[str]:
    text = (resources.files("tzdata.zoneinfo") / "iso3166.tab").read_text(encoding="utf-8")
    return {line.split("\t")[0] for line in text.splitlines() if line and line[0] != "#"}


def test_countries_are_exactly_the_assigned_iso_3166_codes() -> None:
    assert iana_countries() == COUNTRIES
    assert len(COUNTRIES) == 249


@pytest.mark.parametrize("code", ["UK", "EU", "XK", "AN", "YU", "CS", "ZZ"])
def test_reserved_withdrawn_and_user_assigned_codes_are_not_countries(code: str) -> None:
    assert code not in COUNTRIES


@pytest.mark.parametrize(("code", "shaped"), [("US", True), ("us", False), ("USA", False)])
def test_country_pattern_is_two_capital_letters(code: str, shaped: bool) -> None:
    assert bool(re.fullmatch(COUNTRY_PATTERN, code)) is shaped
    assert all(re.fullmatch(COUNTRY_PATTERN, c) for c in COUNTRIES)


def test_currencies_are_iso_4217_shaped_and_current() -> None:
    assert len(CURRENCIES) == 48
    assert all(re.fullmatch(r"[A-Z]{3}", code) for code in CURRENCIES)
    assert {"USD", "EUR", "GBP", "JPY", "CNY", "INR", "BRL"} <= CURRENCIES
    # Replaced codes (Deutsche Mark, French franc, Croatian kuna, old leone and bolivar), the
    # test code, no-currency code and crypto are not accepted.
    assert not {"DEM", "FRF", "HRK", "SLL", "VEF", "XTS", "XXX", "BTC"} & CURRENCIES


def test_the_fraud_service_accepts_exactly_the_reference_currencies() -> None:
    """Its currency field narrows nothing: every reference code, and no other, is accepted."""
    currency = load_domain(ROOT / "feature_repo" / "fraud").request_fields["currency"]
    assert currency.constraints.values is None
    assert {currency.parse(code) for code in CURRENCIES} == CURRENCIES
    for code in ("DEM", "HRK", "XXX", "BTC"):
        with pytest.raises(ValueError, match="not a supported ISO 4217 currency code"):
            currency.parse(code)
    country = load_domain(ROOT / "feature_repo" / "fraud").request_fields["ip_country"]
    assert {country.parse(code) for code in COUNTRIES} == COUNTRIES
