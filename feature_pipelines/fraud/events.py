"""Transactions as stream events: the payload the fraud stream carries, and its decoding.

A ``TransactionEvent`` travels on the stream as flat string fields (``to_fields``) and comes
back through ``from_fields``, which the stream source is given as its decoder; an entry that is
not a well-formed transaction raises ``InvalidEvent`` and is dead-lettered by the consumer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

import pandas as pd

from feature_pipelines.fraud import schema
from feature_pipelines.streaming.source import InvalidEvent
from feature_pipelines.streaming.state import MEMBER_SEPARATOR

#: Redis Stream key of the transaction events.
STREAM: Final = "fraud:transactions"
_OPTIONAL = (schema.CARD_COUNTRY, schema.IP_COUNTRY, schema.MERCHANT_COUNTRY, schema.CURRENCY)


@dataclass(frozen=True)
class TransactionEvent:
    """One payment as it travels on the stream; ``event_time_us`` is UTC epoch microseconds."""

    transaction_id: str
    event_time_us: int
    amount: float
    ip_address: str
    card_id: str
    merchant_id: str
    card_country: str | None = None
    ip_country: str | None = None
    merchant_country: str | None = None
    currency: str | None = None

    @property
    def event_time(self) -> datetime:
        """Event time as an aware UTC datetime (microsecond precision)."""
        return datetime.fromtimestamp(self.event_time_us / 1_000_000, tz=UTC)

    def to_fields(self) -> dict[str, str]:
        """Flat string fields of a stream entry; absent optional fields are left out."""
        fields = {
            schema.TRANSACTION_ID: self.transaction_id,
            "event_time_us": str(self.event_time_us),
            # repr round-trips a float exactly, so a redelivered event decodes identically.
            schema.AMOUNT: repr(float(self.amount)),
            schema.IP_ADDRESS: self.ip_address,
            schema.CARD_ID: self.card_id,
            schema.MERCHANT_ID: self.merchant_id,
        }
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str, str] | Mapping[bytes, bytes]) -> TransactionEvent:
        """Decode a stream entry; raises InvalidEvent naming what is wrong."""
        text: dict[str, str] = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in cast(Mapping[Any, Any], fields).items()
        }
        required = [
            schema.TRANSACTION_ID,
            "event_time_us",
            schema.AMOUNT,
            schema.IP_ADDRESS,
            schema.CARD_ID,
            schema.MERCHANT_ID,
        ]
        missing = [name for name in required if not text.get(name)]
        if missing:
            raise InvalidEvent(f"event lacks {missing}")
        try:
            event_time_us = int(text["event_time_us"])
            amount = float(text[schema.AMOUNT])
        except ValueError as exc:
            raise InvalidEvent(f"event has a malformed time or amount: {exc}") from None
        if not math.isfinite(amount) or amount < 0:
            raise InvalidEvent(f"amount must be finite and not negative, got {amount!r}")
        # The window state stores counterparts after a separator (see streaming.state).
        for name in (schema.IP_ADDRESS, schema.CARD_ID):
            if MEMBER_SEPARATOR in text[name]:
                raise InvalidEvent(f"{name} must not contain {MEMBER_SEPARATOR!r}")
        return cls(
            transaction_id=text[schema.TRANSACTION_ID],
            event_time_us=event_time_us,
            amount=amount,
            ip_address=text[schema.IP_ADDRESS],
            card_id=text[schema.CARD_ID],
            merchant_id=text[schema.MERCHANT_ID],
            **{name: text.get(name) or None for name in _OPTIONAL},
        )


def events_from_frame(frame: pd.DataFrame) -> list[TransactionEvent]:
    """Transactions (schema columns) as stream events, in the frame's order."""
    stamps = pd.to_datetime(frame[schema.EVENT_TIMESTAMP], utc=True)
    times = stamps.dt.tz_convert(None).to_numpy(dtype="datetime64[us]").astype("int64")

    def column(name: str) -> list[str | None]:
        if name not in frame.columns:
            return [None] * len(frame)
        return [None if pd.isna(v) else str(v) for v in frame[name]]

    optional = {name: column(name) for name in _OPTIONAL}
    return [
        TransactionEvent(
            transaction_id=str(tid),
            event_time_us=int(t),
            amount=float(amount),
            ip_address=str(ip),
            card_id=str(card),
            merchant_id=str(merchant),
            **{name: values[i] for name, values in optional.items()},
        )
        for i, (tid, t, amount, ip, card, merchant) in enumerate(
            zip(
                frame[schema.TRANSACTION_ID],
                times,
                frame[schema.AMOUNT],
                frame[schema.IP_ADDRESS],
                frame[schema.CARD_ID],
                frame[schema.MERCHANT_ID],
                strict=True,
            )
        )
    ]
