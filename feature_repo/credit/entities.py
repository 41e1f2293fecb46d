"""Entities: the business objects a loan application touches.

An application names its applicant and the applicant's zipcode. The applicant's credit history
(from a bureau) and the zipcode's statistics (from tax returns) are looked up by these keys.
"""

from feast import Entity, ValueType

person = Entity(
    name="person",
    join_keys=["dob_ssn"],
    value_type=ValueType.STRING,
    description="Applicant: date of birth (YYYYMMDD) and the last four SSN digits, e.g. "
    "19530219_5179.",
)

zipcode = Entity(
    name="zipcode",
    join_keys=["zipcode"],
    value_type=ValueType.STRING,
    # Text, not a number: ZIP codes keep their leading zeros (00501), and every entity key of
    # the platform is text.
    description="US ZIP code of the applicant's address, five digits.",
)
