"""Feature services: one per model version, the single source of that model's feature list.

Training retrieves its point-in-time training set through the service and the scoring
service reads the same service online, so the two cannot drift apart silently. The application's
own numbers (age, income, employment length, amount, interest rate) are read straight from the
request; they are the domain's ``request_features`` (domain.yaml), after these.
"""

from feast import FeatureService
from feature_views import credit_history, zipcode_features
from on_demand_features import application_categories, application_ratios, credit_burden

credit_model_v1 = FeatureService(
    name="credit_model_v1",
    features=[
        zipcode_features,
        credit_history,
        application_ratios,
        credit_burden,
        application_categories,
    ],
    description="ZIP code statistics, the applicant's credit history (when there is one), "
    "affordability ratios and the encoded application categories.",
    tags={"model": "credit_model", "version": "v1"},
)
