"""On-demand feature views: application values set against stored features, per request.

Training gets them from ``get_historical_features`` (request columns come from the entity
dataframe of loan applications); the scoring service computes them on the row it has just read.
Both run the same functions of ``transforms.py`` in this folder, so a change there changes
training and serving together (and the service refuses a model trained with other code). Each
view names its function in the ``transform`` tag, which training records in the model package.

The function bodies import inside themselves: Feast stores each function's source text and
re-creates it elsewhere from that text alone, where module-level imports of this file do not
exist. Annotations stay builtin for the same reason.
"""

from feast import Field, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, String
from feature_views import credit_history, zipcode_features

application_request = RequestSource(
    name="application_request",
    schema=[
        Field(name="loan_amnt", dtype=Float64),
        Field(name="person_income", dtype=Float64),
        Field(name="person_home_ownership", dtype=String),
        Field(name="loan_intent", dtype=String),
    ],
    description="Values of the loan application being scored.",
)


@on_demand_feature_view(
    sources=[zipcode_features, application_request],
    schema=[
        Field(name="loan_to_income", dtype=Float64),
        Field(name="income_to_zip_mean_wage", dtype=Float64),
    ],
    mode="python",
    description="The loan over the yearly income; the income over the ZIP code's mean wage.",
    tags={"team": "credit", "transform": "feature_repo.credit.transforms:application_ratios"},
)
def application_ratios(inputs: dict) -> dict:
    from feature_repo.credit import transforms

    return transforms.application_ratios(inputs)


@on_demand_feature_view(
    sources=[credit_history, application_request],
    schema=[Field(name="debt_to_income", dtype=Float64)],
    mode="python",
    description="Debts due in the credit history over the yearly income.",
    tags={"team": "credit", "transform": "feature_repo.credit.transforms:credit_burden"},
)
def credit_burden(inputs: dict) -> dict:
    from feature_repo.credit import transforms

    return transforms.credit_burden(inputs)


@on_demand_feature_view(
    sources=[application_request],
    schema=[
        Field(name="home_ownership_code", dtype=Float64),
        Field(name="loan_intent_code", dtype=Float64),
    ],
    mode="python",
    description="Home ownership and loan intent encoded as in training.",
    tags={"team": "credit", "transform": "feature_repo.credit.transforms:application_categories"},
)
def application_categories(inputs: dict) -> dict:
    from feature_repo.credit import transforms

    return transforms.application_categories(inputs)
