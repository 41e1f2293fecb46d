"""Feast's key layout and value encodings, decoded as protobuf would."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from feast.infra.online_stores.helpers import _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from google.protobuf.timestamp_pb2 import Timestamp

from feature_repo.layout import ViewSpec
from scoring_service.redis.codec import (
    ViewCodec,
    decode_timestamp,
    decode_value,
    decode_values,
    plan_read,
)
from scoring_service.stages.features import StoreLayout

LAYOUT = StoreLayout.from_views(
    {
        "ip_features": ViewSpec("ip_address", 3600, ["a", "b"]),
        "card_features": ViewSpec("card_id", None, ["c"]),
        "card_more": ViewSpec("card_id", 60, ["d", "e", "f"], evidence=False),
    }
)


def test_keys_are_feasts() -> None:
    for view in LAYOUT.views:
        codec = ViewCodec.build(view, "fraud_scoring")
        for entity_id in ("card_0000001", "131.235.53.79", "2001:db8::1", "m_ünïcødé", ""):
            proto = EntityKeyProto(
                join_keys=[view.join_key], entity_values=[ValueProto(string_val=entity_id)]
            )
            assert codec.redis_key(entity_id) == _redis_key("fraud_scoring", proto, 3)


def test_plan_reads_each_entity_once_per_view() -> None:
    codecs = [ViewCodec.build(view, "p") for view in LAYOUT.views]
    keys: dict[str, list[str | None]] = {
        "ip_address": ["1.1.1.1", None, "1.1.1.1", "2.2.2.2"],
        "card_id": ["c1", "c2", None, "c1"],
    }
    plan = plan_read(codecs, keys)
    assert plan.n == 4
    assert plan.count == 2 + 2 + 2  # distinct entities per view
    assert [(c.view.name, index, m) for c, index, m in plan.blocks] == [
        ("ip_features", [0, -1, 0, 1], 2),
        ("card_features", [0, 1, -1, 0], 2),
        ("card_more", [0, 1, -1, 0], 2),
    ]
    order = ((0, "1.1.1.1"), (0, "2.2.2.2"), (1, "c1"), (1, "c2"), (2, "c1"), (2, "c2"))
    assert plan.keys == [codecs[v].redis_key(e) for v, e in order]
    assert plan.commands == [codecs[v].command(e) for v, e in order]
    assert plan.payload == b"".join(plan.commands)


@pytest.mark.parametrize(
    "proto",
    [
        ValueProto(int64_val=0),
        ValueProto(int64_val=127),
        ValueProto(int64_val=128),
        ValueProto(int64_val=-1),
        ValueProto(int64_val=-(2**63)),
        ValueProto(int64_val=2**53 + 1),
        ValueProto(int32_val=-7),
        ValueProto(double_val=0.0),
        ValueProto(double_val=-1.5e-300),
        ValueProto(float_val=0.1),
        ValueProto(bool_val=True),
        ValueProto(unix_timestamp_val=1_700_000_000),
        ValueProto(),
    ],
)
def test_decode_value_equals_protobuf(proto: ValueProto) -> None:
    kind = proto.WhichOneof("val")
    expected = np.nan if kind is None else float(getattr(proto, kind))
    got = decode_value(proto.SerializeToString())
    assert got == expected or (np.isnan(got) and np.isnan(expected))


def test_decode_refuses_text_and_reads_absent() -> None:
    assert np.isnan(decode_value(None))
    with pytest.raises(ValueError, match="not numeric"):
        decode_value(ValueProto(string_val="x").SerializeToString())


def test_decode_timestamp() -> None:
    stamp = Timestamp(seconds=1_792_357_200, nanos=123_456_000)
    assert decode_timestamp(stamp.SerializeToString()) == pytest.approx(1_792_357_200.123456)
    assert decode_timestamp(Timestamp(seconds=5).SerializeToString()) == 5.0
    for absent in (None, b"", Timestamp().SerializeToString()):
        assert np.isnan(decode_timestamp(absent))


def _outcome(decode: Callable[[], object]) -> object:
    try:
        return np.asarray(decode(), dtype=np.float64).tolist()
    except Exception as exc:  # the very exception is what is compared
        return (type(exc), str(exc))


def test_decode_values_equals_decode_value() -> None:
    """In bulk, every wire form Feast writes (and absent, null and malformed values) decodes
    to what decode_value gives it, errors included."""
    rng = np.random.default_rng(5)
    protos = [
        *(ValueProto(int64_val=int(v)) for v in rng.integers(-(2**63), 2**63 - 1, 300)),
        *(ValueProto(int64_val=int(v)) for v in rng.integers(0, 300, 300)),
        *(ValueProto(int32_val=int(v)) for v in rng.integers(-(2**31), 2**31 - 1, 100)),
        *(ValueProto(double_val=float(v)) for v in rng.normal(0, 1e6, 300)),
        *(ValueProto(float_val=float(v)) for v in rng.normal(0, 1e3, 100)),
        *(ValueProto(bool_val=bool(v)) for v in rng.integers(0, 2, 20)),
        ValueProto(unix_timestamp_val=1_700_000_000),
        ValueProto(double_val=float("nan")),
        ValueProto(),
    ]
    raws: list[bytes | None] = [p.SerializeToString() for p in protos] + [None, b""]
    order = rng.permutation(len(raws))
    raws = [raws[i] for i in order]
    got = decode_values(raws)
    expected = [decode_value(raw) for raw in raws]
    np.testing.assert_array_equal(got, expected)
    assert decode_values([]).shape == (0,)
    malformed = [
        bytes([0x20, 0x85]),  # a varint that never ends
        bytes([0x20, 0x05, 0x05]),  # bytes after the varint's end
        bytes([0x20, *[0xFF] * 9, 0x05]),  # a tenth byte beyond 64 bits
        bytes([0x29, 1, 2]),  # a short double
        ValueProto(string_val="x").SerializeToString(),
    ]
    for bad in malformed:
        values = [*raws[:5], bad, *raws[5:9]]
        assert _outcome(lambda v=values: decode_values(v)) == _outcome(
            lambda v=values: [decode_value(raw) for raw in v]
        ), bad
