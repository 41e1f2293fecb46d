"""Feature services: one per model version, the single source of that model's feature list.

Training retrieves its point-in-time training set through the service and the scoring
service reads the same service online, so the two cannot drift apart silently.
"""

from feast import FeatureService
from feature_views import card_features, ip_features, merchant_features

fraud_model_v1 = FeatureService(
    name="fraud_model_v1",
    features=[ip_features, card_features, merchant_features],
    description="Batch (hourly) features of the sender IP, the card and the merchant.",
    tags={"model": "fraud_model", "version": "v1"},
)
