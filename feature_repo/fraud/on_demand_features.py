"""On-demand feature views: request values set against stored features, computed per request.

Training gets them from ``get_historical_features`` (request columns come from the entity
dataframe); the scoring service computes them on the row it has just read. Both run the same
functions of ``transforms.py`` in this folder, so a change there changes training and serving
together (and the service refuses a model trained with other code). Each view names its function
in the ``transform`` tag, which training records in the model package.

The function bodies import inside themselves: Feast stores each function's source text and
re-creates it elsewhere from that text alone, where module-level imports of this file do not
exist. Annotations stay builtin for the same reason.
"""

from feast import Field, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, String
from feature_views import card_features, ip_features
from stream_features import card_stream_features

transaction_request = RequestSource(
    name="transaction_request",
    schema=[
        Field(name="amount", dtype=Float64),
        Field(name="card_country", dtype=String),
        Field(name="ip_country", dtype=String),
        Field(name="merchant_country", dtype=String),
    ],
    description="Values of the transaction being scored.",
)


@on_demand_feature_view(
    sources=[card_features, ip_features, card_stream_features, transaction_request],
    schema=[
        Field(name="amount_to_card_mean_30d", dtype=Float64),
        Field(name="amount_to_card_max_30d", dtype=Float64),
        Field(name="amount_to_ip_mean_7d", dtype=Float64),
        Field(name="amount_to_card_mean_1h", dtype=Float64),
    ],
    mode="python",
    description="This amount over the card's (30 days, last hour) and the IP's usual amounts.",
    tags={"team": "fraud", "transform": "feature_repo.fraud.transforms:amount_context"},
)
def amount_context(inputs: dict) -> dict:
    from feature_repo.fraud import transforms

    return transforms.amount_context(inputs)


@on_demand_feature_view(
    sources=[transaction_request],
    schema=[
        Field(name="ip_country_mismatch", dtype=Float64),
        Field(name="merchant_country_mismatch", dtype=Float64),
    ],
    mode="python",
    description="IP country and merchant country versus the card's country.",
    tags={"team": "fraud", "transform": "feature_repo.fraud.transforms:geo_context"},
)
def geo_context(inputs: dict) -> dict:
    from feature_repo.fraud import transforms

    return transforms.geo_context(inputs)
