"""Payment transactions: their columns, the generator's world, and the fraud entities.

Column names and dtypes of a generated transaction, the join keys of the ip / card / merchant
entities and the batch features of each, shared by the fraud jobs (generate, aggregate, their
Spark twin). The Feast feature views in ``feature_repo/fraud/`` are the source of truth for
feature names and types; ``tests/feature_pipelines/fraud/test_feature_lists.py`` holds these
lists, and the stream windows of ``windows.py``, equal to them.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from feature_pipelines.schema import CREATED_TIMESTAMP as CREATED_TIMESTAMP
from feature_pipelines.schema import EVENT_TIMESTAMP as EVENT_TIMESTAMP
from feature_repo.reference import COUNTRIES as REFERENCE_COUNTRIES
from feature_repo.reference import CURRENCIES

# --- raw transactions ------------------------------------------------------------------------

TRANSACTION_ID: Final = "transaction_id"
AMOUNT: Final = "amount"
CURRENCY: Final = "currency"
IP_ADDRESS: Final = "ip_address"
CARD_ID: Final = "card_id"
MERCHANT_ID: Final = "merchant_id"
CARD_COUNTRY: Final = "card_country"
IP_COUNTRY: Final = "ip_country"
MERCHANT_COUNTRY: Final = "merchant_country"
MERCHANT_CATEGORY: Final = "merchant_category"
IS_FRAUD: Final = "is_fraud"
FRAUD_PATTERN: Final = "fraud_pattern"
LABEL_AVAILABLE_AT: Final = "label_available_at"

#: Column order of a generated transactions frame.
TRANSACTION_COLUMNS: Final[list[str]] = [
    TRANSACTION_ID,
    EVENT_TIMESTAMP,
    AMOUNT,
    CURRENCY,
    IP_ADDRESS,
    CARD_ID,
    MERCHANT_ID,
    CARD_COUNTRY,
    IP_COUNTRY,
    MERCHANT_COUNTRY,
    MERCHANT_CATEGORY,
    IS_FRAUD,
    FRAUD_PATTERN,
    LABEL_AVAILABLE_AT,
]

#: pandas dtypes of a generated transactions frame ("object" columns hold Python str).
TRANSACTION_DTYPES: Final = MappingProxyType(
    {
        TRANSACTION_ID: "object",
        EVENT_TIMESTAMP: "datetime64[ns, UTC]",
        AMOUNT: "float64",
        CURRENCY: "object",
        IP_ADDRESS: "object",
        CARD_ID: "object",
        MERCHANT_ID: "object",
        CARD_COUNTRY: "object",
        IP_COUNTRY: "object",
        MERCHANT_COUNTRY: "object",
        MERCHANT_CATEGORY: "object",
        IS_FRAUD: "int8",
        FRAUD_PATTERN: "object",
        LABEL_AVAILABLE_AT: "datetime64[ns, UTC]",
    }
)

#: Columns that must never be used as model features (labels and evaluation-only metadata).
LABEL_COLUMNS: Final[list[str]] = [IS_FRAUD, FRAUD_PATTERN, LABEL_AVAILABLE_AT]

FRAUD_PATTERN_NONE: Final = "none"
#: A legitimate purchase its cardholder disputed: labelled fraud (a chargeback) without being fraud.
FRAUD_PATTERN_FRIENDLY: Final = "friendly_fraud"
#: The pattern the generator introduces only from ``--new-pattern-from-day`` on (drift studies).
FRAUD_PATTERN_NEW: Final = "account_takeover"
#: What generated each row (the truth). ``is_fraud`` is the reported label: some fraud of every
#: pattern is never reported (``is_fraud`` 0) and ``friendly_fraud`` rows are legitimate rows
#: charged back (``is_fraud`` 1).
FRAUD_PATTERNS: Final[tuple[str, ...]] = (
    FRAUD_PATTERN_NONE,
    "ring",
    "card_testing",
    "stolen_card",
    "risky_merchant",
    FRAUD_PATTERN_FRIENDLY,
    FRAUD_PATTERN_NEW,
)

MERCHANT_CATEGORIES: Final[tuple[str, ...]] = (
    "grocery",
    "restaurants",
    "fuel",
    "pharmacy",
    "fashion",
    "electronics",
    "travel",
    "gaming",
    "digital_goods",
    "jewelry",
    "gift_cards",
    "subscriptions",
)

#: ISO-3166 alpha-2 country -> ISO-4217 currency of cards issued there: the generator's world,
#: a subset of the reference lists (checked below).
COUNTRY_CURRENCY: Final = MappingProxyType(
    {
        "US": "USD",
        "GB": "GBP",
        "DE": "EUR",
        "FR": "EUR",
        "ES": "EUR",
        "IT": "EUR",
        "NL": "EUR",
        "IE": "EUR",
        "CA": "CAD",
        "AU": "AUD",
        "JP": "JPY",
        "BR": "BRL",
        "IN": "INR",
        "MX": "MXN",
        "SG": "SGD",
        "CH": "CHF",
        "SE": "SEK",
        "NG": "NGN",
        "RU": "RUB",
        "RO": "RON",
        "UA": "UAH",
        "VN": "VND",
        "ID": "IDR",
        "CN": "CNY",
        "PH": "PHP",
    }
)

# Generated currencies come from the platform's reference list (the codes a ``currency`` request
# field accepts), so training data never holds a code that serving would refuse.
_unlisted = sorted(set(COUNTRY_CURRENCY.values()) - CURRENCIES)
if _unlisted:
    raise ValueError(f"currencies {_unlisted} are not in feature_repo.reference.CURRENCIES")

#: Countries that appear in card_country, ip_country and merchant_country.
COUNTRIES: Final[tuple[str, ...]] = tuple(COUNTRY_CURRENCY)
if not set(COUNTRIES) <= REFERENCE_COUNTRIES:
    raise ValueError("a generated country is not an ISO 3166-1 alpha-2 code")

# --- entities -------------------------------------------------------------------------------

IP_JOIN_KEY: Final = IP_ADDRESS
CARD_JOIN_KEY: Final = CARD_ID
MERCHANT_JOIN_KEY: Final = MERCHANT_ID

#: Amounts below this count as "small" (card-testing probes).
SMALL_AMOUNT_THRESHOLD: Final = 5.0

# --- batch features (offline sources of the Feast feature views) ------------------------------

IP_FEATURES: Final[list[str]] = [
    "ip_txn_count_1h",
    "ip_txn_count_24h",
    "ip_txn_count_7d",
    "ip_distinct_cards_24h",
    "ip_amount_mean_7d",
    "ip_chargeback_count_30d",
    "ip_fraud_rate_30d",
]

CARD_FEATURES: Final[list[str]] = [
    "card_txn_count_1h",
    "card_txn_count_24h",
    "card_txn_count_7d",
    "card_amount_mean_30d",
    "card_amount_max_30d",
    "card_distinct_ips_24h",
    "card_distinct_countries_24h",
    "card_small_txn_count_24h",
]

MERCHANT_FEATURES: Final[list[str]] = [
    "merchant_txn_count_24h",
    "merchant_txn_count_7d",
    "merchant_amount_mean_7d",
    "merchant_chargeback_count_30d",
    "merchant_fraud_rate_30d",
]

#: Entity name (as used in aggregate() output keys and file names) -> join key.
ENTITY_JOIN_KEYS: Final = MappingProxyType(
    {"ip": IP_JOIN_KEY, "card": CARD_JOIN_KEY, "merchant": MERCHANT_JOIN_KEY}
)

#: Entity name -> feature names of its feature view.
ENTITY_FEATURES: Final = MappingProxyType(
    {"ip": IP_FEATURES, "card": CARD_FEATURES, "merchant": MERCHANT_FEATURES}
)


def feature_dtype(name: str) -> str:
    """Return the pandas dtype of a batch feature: int64 for counts, float64 otherwise."""
    return "int64" if "_count_" in name or "_distinct_" in name else "float64"


#: File of each entity's table inside the feature repository's data folder.
TABLE_FILES: Final = MappingProxyType(
    {entity: f"{entity}_features.parquet" for entity in ENTITY_JOIN_KEYS}
)


#: Transaction columns that a business caller sends to POST /v1/transactions/score.
REQUEST_FIELDS: Final[tuple[str, ...]] = (
    TRANSACTION_ID,
    AMOUNT,
    CURRENCY,
    IP_ADDRESS,
    CARD_ID,
    MERCHANT_ID,
    CARD_COUNTRY,
    IP_COUNTRY,
    MERCHANT_COUNTRY,
)


def api_body(row: object) -> dict[str, object]:
    """A generated transaction (a pandas row or namedtuple) as a scoring API request body."""
    body: dict[str, object] = {name: getattr(row, name) for name in REQUEST_FIELDS}
    body[AMOUNT] = float(body[AMOUNT])  # type: ignore[arg-type]
    return body
