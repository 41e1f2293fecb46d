"""Feast's Redis layout as bytes: keys, HMGET commands, and the values they return.

Feast writes one Redis hash per entity key (``serialize_entity_key`` v3 + project). Inside it,
each feature is a field named by the murmur3 hash of ``"view:feature"`` holding a serialized
``ValueProto``, and ``"_ts:view"`` holds the view's event time as a serialized protobuf
``Timestamp`` (``feast/infra/online_stores/redis.py``). This module packs the RESP commands of a
read from bytes precomputed per view, and decodes the numeric wire forms Feast writes with a
small protobuf decoder, ``ValueProto`` being the fallback.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from feast.infra.key_encoding_utils import serialize_entity_key_prefix
from feast.infra.online_stores.helpers import _mmh3
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.protos.feast.types.Value_pb2 import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from feature_repo.online import ViewLayout

NAN = math.nan

# --- decoding Feast's values ----------------------------------------------------------------

# ValueProto wire tags (field number << 3 | wire type) of the numeric kinds Feast writes.
_INT32, _INT64, _DOUBLE, _FLOAT, _BOOL, _UNIX_TS = 0x18, 0x20, 0x29, 0x35, 0x38, 0x40
_VARINT_TAGS = frozenset((_INT32, _INT64, _BOOL, _UNIX_TS))
_unpack_double = struct.Struct("<d").unpack_from
_unpack_float = struct.Struct("<f").unpack_from

SMALL_VALUES: dict[bytes, float] = {
    bytes((tag, i)): float(i) for tag in _VARINT_TAGS for i in range(128)
}
"""Counts are mostly small: a one-byte varint is a dictionary hit. b"" is a null value."""
SMALL_VALUES[b""] = NAN


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    """(unsigned value, next position) of the base-128 varint at ``pos``."""
    value = shift = 0
    while True:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _slow_value(raw: bytes) -> float:
    """Any other ValueProto, parsed by protobuf; a non-numeric feature is a contract error."""
    proto = ValueProto.FromString(raw)
    kind = proto.WhichOneof("val")
    if kind is None or kind == "null_val":
        return NAN
    value = getattr(proto, kind)
    if isinstance(value, bool | int | float):
        return float(value)
    raise ValueError(f"online feature of kind {kind} is not numeric; the model cannot use it")


def decode_value(raw: bytes | None) -> float:
    """A serialized ValueProto as the float the model reads (NaN for null or absent)."""
    if raw is None:
        return NAN
    small = SMALL_VALUES.get(raw)
    if small is not None:
        return small
    tag = raw[0]
    if tag == _DOUBLE and len(raw) == 9:
        return _unpack_double(raw, 1)[0]
    if tag in _VARINT_TAGS:
        value, end = _varint(raw, 1)
        if end == len(raw):
            # int32/int64 negatives are 10-byte two's complement varints.
            return float(value - (1 << 64) if value >= 1 << 63 else value)
    elif tag == _FLOAT and len(raw) == 5:
        return _unpack_float(raw, 1)[0]
    return _slow_value(raw)


_MAX_VARINT = 10  # bytes of the longest varint (a negative int64)
_IS_VARINT_TAG = np.zeros(256, dtype=bool)
_IS_VARINT_TAG[list(_VARINT_TAGS)] = True


def decode_values(raws: Sequence[bytes | None]) -> np.ndarray:
    """``decode_value`` of every element, as float64, in bulk.

    The wire forms Feast writes for numbers (a varint, a double, a float, each behind its tag)
    are decoded with array operations over the concatenated bytes; anything else (a malformed
    varint, another kind, a null that is not empty) goes through ``decode_value`` one by one,
    so each element gets exactly what ``decode_value`` gives it, errors included.
    """
    count = len(raws)
    out = np.full(count, NAN)
    if count == 0:
        return out
    texts = cast("Sequence[bytes]", raws)  # None is ruled out just below
    try:
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=count)
    except TypeError:  # an absent field (None) reads as an empty value: NaN
        texts = [b"" if raw is None else raw for raw in raws]
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=count)
    joined = b"".join(texts)
    if not joined:
        return out
    data = np.frombuffer(joined, dtype=np.uint8)
    last = len(data) - 1
    starts = np.cumsum(lengths) - lengths
    tags = np.where(lengths > 0, data[np.minimum(starts, last)], 0)
    varint = _IS_VARINT_TAG[tags]
    # A one-byte varint (a small count, a flag): the byte after the tag, below 0x80.
    second = data[np.minimum(starts + 1, last)]
    small = varint & (lengths == 2) & (second < 0x80)
    out[small] = second[small]
    done = small
    double = (tags == _DOUBLE) & (lengths == 9)
    if double.any():
        out[double] = _gather(data, starts[double] + 1, 8).view("<f8").ravel()
        done = done | double
    single = (tags == _FLOAT) & (lengths == 5)
    if single.any():
        out[single] = _gather(data, starts[single] + 1, 4).view("<f4").ravel()
        done = done | single
    longer = varint & (lengths > 2) & (lengths <= 1 + _MAX_VARINT)
    if longer.any():
        where = np.flatnonzero(longer)
        size = lengths[where] - 1  # varint bytes after the tag
        at = starts[where, None] + 1 + np.arange(_MAX_VARINT)
        position = np.arange(_MAX_VARINT)
        inside = position < size[:, None]
        body = np.where(inside, data[np.minimum(at, last)], 0)
        continued = (body & 0x80) != 0
        # Well formed and ending exactly at the value's end: every byte but its last continues;
        # a tenth byte carries one bit at most (what Python's arithmetic keeps, 64 bits hold).
        ok = ((continued == (position < size[:, None] - 1)) | ~inside).all(axis=1)
        ok &= (size < _MAX_VARINT) | (body[:, _MAX_VARINT - 1] <= 1)
        digits = (body & 0x7F).astype(np.uint64) << (7 * position).astype(np.uint64)
        value = np.bitwise_or.reduce(digits, axis=1)
        good = where[ok]
        # int32/int64 negatives are 10-byte two's complement varints.
        out[good] = value[ok].view(np.int64).astype(np.float64)
        done[good] = True
    for i in np.flatnonzero((lengths > 0) & ~done).tolist():
        out[i] = decode_value(raws[i])
    return out


def _gather(data: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """``width`` bytes from each start, one row per start."""
    return data[starts[:, None] + np.arange(width)]


def decode_timestamp(raw: bytes | None) -> float:
    """A serialized protobuf Timestamp as epoch seconds; NaN when absent.

    Feast reports a zero timestamp for an entity it has no row for, so zero reads as absent too.
    """
    if not raw:
        return NAN
    seconds = nanos = 0
    pos, end = 0, len(raw)
    try:
        while pos < end:
            tag = raw[pos]
            value, pos = _varint(raw, pos + 1)
            if tag == 0x08:
                seconds = value - (1 << 64) if value >= 1 << 63 else value
            elif tag == 0x10:
                nanos = value
            else:
                raise ValueError(tag)
    except (IndexError, ValueError):
        stamp = Timestamp.FromString(raw)
        seconds, nanos = stamp.seconds, stamp.nanos
    if seconds == 0 and nanos == 0:
        return NAN
    return seconds + nanos / 1e9


# --- packing reads --------------------------------------------------------------------------


_pack_length = struct.Struct("<I").pack
_SIZES_KEPT = 1024  # id lengths whose surrounding bytes a view keeps


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


@dataclass(frozen=True)
class ViewCodec:
    """What one feature view's reads need, computed once at start-up."""

    view: ViewLayout
    fields: tuple[bytes, ...]  # hash fields: mmh3("view:feature")..., b"_ts:view"
    key_prefix: bytes  # serialized entity key up to the value's length
    head: bytes  # RESP array header + HMGET
    tail: bytes  # the fields as RESP bulk strings
    project: bytes
    _around: dict[int, tuple[bytes, bytes, bytes]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def build(cls, view: ViewLayout, project: str) -> ViewCodec:
        """Feast's field names and key layout for one view (entity key serialization v3)."""
        fields = (
            *(_mmh3(f"{view.name}:{feature}") for feature in view.features),
            f"_ts:{view.name}".encode(),
        )
        # serialize_entity_key v3 for one string join key: the key part, then the value's
        # type and length, then the value; the project name follows (helpers._redis_key).
        prefix = serialize_entity_key_prefix([view.join_key], 3) + struct.pack(
            "<I", ValueType.STRING
        )
        return cls(
            view=view,
            fields=fields,
            key_prefix=prefix,
            head=b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(fields)),
            tail=b"".join(_bulk(f) for f in fields),
            project=project.encode(),
        )

    def around(self, size: int) -> tuple[bytes, bytes, bytes]:
        """The bytes around an id of ``size`` bytes: (its key before the id, its command
        before the id, its command after the id); the key ends with the project."""
        parts = self._around.get(size)
        if parts is None:
            key_head = self.key_prefix + _pack_length(size)
            key_size = len(key_head) + size + len(self.project)
            command_head = b"%s$%d\r\n%s" % (self.head, key_size, key_head)
            parts = (key_head, command_head, self.project + b"\r\n" + self.tail)
            if len(self._around) < _SIZES_KEPT:
                self._around[size] = parts
        return parts

    def redis_key(self, entity_id: str) -> bytes:
        """The hash key Feast writes this entity under."""
        value = entity_id.encode()
        return b"%s%s%s%s" % (self.key_prefix, struct.pack("<I", len(value)), value, self.project)

    def command(self, entity_id: str) -> bytes:
        """One packed ``HMGET key field...``."""
        return self.command_for_key(self.redis_key(entity_id))

    def command_for_key(self, key: bytes) -> bytes:
        """The same for a key already built."""
        return b"%s$%d\r\n%s\r\n%s" % (self.head, len(key), key, self.tail)


@dataclass
class ReadPlan:
    """The commands of one read and where each request's row comes back."""

    n: int
    commands: list[bytes]  # one packed HMGET per distinct (view, entity)
    keys: list[bytes]  # each command's key (a cluster routes by it)
    blocks: list[tuple[ViewCodec, list[int], int]]  # (view, [n] reply index or -1, replies)

    @property
    def count(self) -> int:
        """Replies expected."""
        return len(self.commands)

    @property
    def payload(self) -> bytes:
        """Every command, back to back (one pipeline to one server)."""
        return b"".join(self.commands)


def plan_read(codecs: Sequence[ViewCodec], keys: dict[str, list[str | None]]) -> ReadPlan:
    """Pack one HMGET per distinct (view, entity) of the requests, views in layout order.

    Built in a few list comprehensions per view rather than a call per key: a score-batch of
    10,000 transactions packs about 25,000 commands.
    """
    n = len(next(iter(keys.values()))) if keys else 0
    commands: list[bytes] = []
    redis_keys: list[bytes] = []
    blocks: list[tuple[ViewCodec, list[int], int]] = []
    for codec in codecs:
        # Each request's position among the view's distinct entities, in first-seen order
        # (len(seen) is read before setdefault inserts).
        seen: dict[str, int] = {}
        add = seen.setdefault
        index = [-1 if e is None else add(e, len(seen)) for e in keys[codec.view.join_key]]
        values = [entity_id.encode() for entity_id in seen]
        # Everything but the id's own bytes depends on its length only: built once per length.
        around = [codec.around(size) for size in map(len, values)]
        project = codec.project
        view_keys = [parts[0] + v + project for parts, v in zip(around, values, strict=True)]
        commands += [parts[1] + v + parts[2] for parts, v in zip(around, values, strict=True)]
        redis_keys += view_keys
        blocks.append((codec, index, len(values)))
    return ReadPlan(n=n, commands=commands, keys=redis_keys, blocks=blocks)
