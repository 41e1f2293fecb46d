"""Entities: the business objects a transaction touches.

A payment maps to three of them. Each has its own history, and fraud patterns live in
different ones: rings reuse IP addresses, stolen cards move across IPs and countries,
and some merchants attract fraud.
"""

from feast import Entity, ValueType

ip_address = Entity(
    name="ip_address",
    join_keys=["ip_address"],
    value_type=ValueType.STRING,
    description="Sender IP address in canonical text form (IPv4 dotted quad, compressed IPv6).",
)

card = Entity(
    name="card",
    join_keys=["card_id"],
    value_type=ValueType.STRING,
    description="Payment card, identified by its token.",
)

merchant = Entity(
    name="merchant",
    join_keys=["merchant_id"],
    value_type=ValueType.STRING,
    description="Merchant receiving the payment.",
)
