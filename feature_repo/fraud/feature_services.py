"""Feature services: one per model version, the single source of that model's feature list.

Training retrieves its point-in-time training set through the service and the scoring
service reads the same service online, so the two cannot drift apart silently.
"""

from feast import FeatureService
from feature_views import card_features, ip_features, merchant_features
from on_demand_features import amount_context, geo_context
from stream_features import card_stream_features, ip_stream_features

fraud_model_v1 = FeatureService(
    name="fraud_model_v1",
    features=[ip_features, card_features, merchant_features],
    description="Batch (hourly) features of the sender IP, the card and the merchant.",
    tags={"model": "fraud_model", "version": "v1"},
)

# An entity's status (present / stale / missing) comes from its views that are evidence of it;
# the streaming views are tagged optional evidence, so a quiet entity without a streaming row
# is not called unknown (see feature_repo.online).
fraud_model_v2 = FeatureService(
    name="fraud_model_v2",
    features=[
        ip_stream_features,
        card_stream_features,
        ip_features,
        card_features,
        merchant_features,
        amount_context,
        geo_context,
    ],
    description="Batch features, minute-fresh streaming windows per IP and card, and on-demand "
    "request features (amount ratios, cross-border flags).",
    tags={"model": "fraud_model", "version": "v2"},
)

# The fallback model of a deployment: it reads nothing from the online store (cross-border flags
# computed from the request, plus the amount), so it can still answer when stored features are
# missing, stale or unreadable.
fraud_model_rt = FeatureService(
    name="fraud_model_rt",
    features=[geo_context],
    description="Request-time features only (cross-border flags and the amount): the fallback "
    "when the online store cannot give a model its features.",
    tags={"model": "fraud_model", "version": "rt", "role": "fallback"},
)
