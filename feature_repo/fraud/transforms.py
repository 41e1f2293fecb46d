"""On-demand features of payments: facts of this payment set against what the store knows.

Called by the on-demand feature views in ``on_demand_features.py`` (training, through Feast) and
by the scoring service (serving), so both compute them with this code. See
``feature_repo.transforms`` for the contract.
"""

from __future__ import annotations

from feature_repo.transforms import Columns, listed, numbers, on_demand_transform, ratio, texts


@on_demand_transform(
    request_fields=("amount",),
    stored_inputs=(
        "card_amount_mean_30d",
        "card_amount_max_30d",
        "ip_amount_mean_7d",
        "card_rt_amount_sum_1h",
        "card_rt_txn_count_1h",
    ),
    outputs=(
        "amount_to_card_mean_30d",
        "amount_to_card_max_30d",
        "amount_to_ip_mean_7d",
        "amount_to_card_mean_1h",
    ),
)
def amount_context(inputs: Columns) -> dict[str, list[float | None]]:
    """This amount against the card's and the IP's usual amounts.

    A stolen card is drained with amounts far above its owner's habits, and a card-testing
    burst of tiny amounts is followed by a large purchase: ratios to the 30-day card mean and
    maximum, the 7-day IP mean and the last hour's card mean (from the stream) show both.
    """
    amount = numbers(inputs["amount"])
    rt_mean = ratio(
        numbers(inputs["card_rt_amount_sum_1h"]), numbers(inputs["card_rt_txn_count_1h"])
    )
    return {
        "amount_to_card_mean_30d": listed(ratio(amount, numbers(inputs["card_amount_mean_30d"]))),
        "amount_to_card_max_30d": listed(ratio(amount, numbers(inputs["card_amount_max_30d"]))),
        "amount_to_ip_mean_7d": listed(ratio(amount, numbers(inputs["ip_amount_mean_7d"]))),
        "amount_to_card_mean_1h": listed(ratio(amount, rt_mean)),
    }


@on_demand_transform(
    request_fields=("card_country", "ip_country", "merchant_country"),
    stored_inputs=(),
    outputs=("ip_country_mismatch", "merchant_country_mismatch"),
)
def geo_context(inputs: Columns) -> dict[str, list[float | None]]:
    """Whether the payment crosses borders: IP country and merchant country versus the card's.

    1.0 when they differ, 0.0 when they match, None when either country is unknown.
    """
    card = texts(inputs["card_country"])
    ip = texts(inputs["ip_country"])
    merchant = texts(inputs["merchant_country"])

    def differs(left: list[str | None], right: list[str | None]) -> list[float | None]:
        return [
            None if a is None or b is None else float(a != b)
            for a, b in zip(left, right, strict=True)
        ]

    return {
        "ip_country_mismatch": differs(ip, card),
        "merchant_country_mismatch": differs(merchant, card),
    }
