"""Feature views: one per entity, read by training (offline) and serving (online).

Both tables are single old snapshots (ZIP code statistics of 2017, a credit history sample of
April 2020), taken before the first application (August 2020), so every application sees them.
The TTLs are long enough for them to serve today, and `feast materialize-incremental` starts a
first run one TTL back, so it loads them too. A live bureau feed would refresh the history and
shorten its TTL (say 90 days), so that an out-of-date history counts as stale evidence.
"""

from datetime import timedelta

from data_sources import credit_history_source, zipcode_source
from entities import person, zipcode
from feast import FeatureView, Field
from feast.types import Int64

zipcode_features = FeatureView(
    name="zipcode_features",
    entities=[zipcode],
    ttl=timedelta(days=20 * 365),  # tax statistics change slowly; the sample is from 2017
    schema=[
        Field(name="tax_returns_filed", dtype=Int64),
        Field(name="population", dtype=Int64),
        Field(name="total_wages", dtype=Int64),
    ],
    online=True,
    source=zipcode_source,
    tags={"team": "credit", "entity": "zipcode"},
)

credit_history = FeatureView(
    name="credit_history",
    entities=[person],
    ttl=timedelta(days=10 * 365),  # the sample's one snapshot is from 2020
    schema=[
        Field(name="credit_card_due", dtype=Int64),
        Field(name="mortgage_due", dtype=Int64),
        Field(name="student_loan_due", dtype=Int64),
        Field(name="vehicle_loan_due", dtype=Int64),
        Field(name="hard_pulls", dtype=Int64),
        Field(name="missed_payments_2y", dtype=Int64),
        Field(name="missed_payments_1y", dtype=Int64),
        Field(name="missed_payments_6m", dtype=Int64),
        Field(name="bankruptcies", dtype=Int64),
    ],
    online=True,
    source=credit_history_source,
    tags={"team": "credit", "entity": "dob_ssn"},
)
