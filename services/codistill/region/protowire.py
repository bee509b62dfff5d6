"""A reader of protobuf wire bytes that keeps counts, spans and a few small values, never whole fields.

Parsing a message materialises every field: a repeated int64 of one-byte varints becomes eight
bytes an entry (more while its array grows), and a bytes field is copied before anything can
look at its length. An incoming message is therefore walked here first, over a memoryview of
the bytes it arrived in: a repeated field is counted (refused past a limit the caller derives
from what it expects), a length-delimited field is remembered as a span, and only a repeated
field the caller asks for (a shape: a handful of entries) is decoded. Work and memory stay
within what an honest message of the receiver's size needs, whatever the wire size.

Stricter than the protobuf parser on purpose, in what no honest sender writes: a singular
field that appears twice, a known field with the wrong wire type, groups, and more than
`unknown_budget` bytes of fields the reader does not know are refused.
Wire format: https://protobuf.dev/programming-guides/encoding/
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
import numpy as np

# Wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_FIXED_SIZE = {_I64: 8, _I32: 4}
# A varint takes at most 10 bytes (a negative int64 takes all ten).
MAX_VARINT_BYTES = 10


class Kind(Enum):
    """How a known field is written: what a reader expects of it."""

    VARINT = _VARINT  # singular integer, enum or bool
    FIXED32 = _I32  # singular float or fixed32
    BYTES = _LEN  # singular string, bytes or sub-message: kept as a span
    REPEATED = -1  # repeated varint: packed (one span) or one entry per tag; counted


class WireError(Exception):
    """The bytes break the wire format or a limit; `field` names the offending field (0: none)."""

    def __init__(self, message: str, field: int = 0, *, too_many: bool = False, unknown: bool = False):
        super().__init__(message)
        self.field = field
        self.too_many = too_many  # a repeated field went past its limit
        self.unknown = unknown  # fields the reader does not know went past their budget


@dataclass
class Fields:
    """What a walk over one message found."""

    scalars: dict[int, int] = field(default_factory=dict)  # VARINT and FIXED32 fields: raw values
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)  # BYTES fields: [start, end)
    counts: dict[int, int] = field(default_factory=dict)  # REPEATED fields: entries
    values: dict[int, list[int]] = field(default_factory=dict)  # REPEATED fields asked for, as int64

    def length(self, number: int) -> int:
        start, end = self.spans.get(number, (0, 0))
        return end - start


class Budget:
    """Bytes of unknown fields a message may carry, shared by it and its sub-messages."""

    def __init__(self, limit: int):
        self.left = limit

    def spend(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise WireError("the message carries more bytes of fields this region does not know than it allows", unknown=True)


def varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    """The unsigned varint at `pos` and the position after it."""
    result = shift = 0
    for i in range(pos, min(end, pos + MAX_VARINT_BYTES)):
        byte = buf[i]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i + 1
        shift += 7
    raise WireError("a varint runs past its field or past ten bytes")


def as_int64(value: int) -> int:
    """Two's complement: a negative int64 travels as a 64-bit unsigned varint."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def as_int32(value: int) -> int:
    value &= (1 << 32) - 1
    return value - (1 << 32) if value >= 1 << 31 else value


def walk(
    buf: memoryview,
    layout: dict[int, Kind],
    *,
    start: int = 0,
    end: int | None = None,
    limits: dict[int, int] | None = None,
    decode: frozenset[int] = frozenset(),
    budget: Budget,
) -> Fields:
    """Walk the fields of one message in `buf[start:end]`.

    `layout`: the known fields and how each is written. `limits`: the most entries a REPEATED
    field may hold; one past it raises WireError(too_many=True) before the rest is looked at.
    `decode`: REPEATED fields whose entries are wanted (keep their limits small).
    """
    end = len(buf) if end is None else end
    limits = limits or {}
    out = Fields()
    pos = start
    while pos < end:
        field_start = pos
        tag, pos = varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise WireError("field number 0")
        kind = layout.get(number)
        if kind is None:
            pos = _skip(buf, pos, end, wire, number)
            budget.spend(pos - field_start)
            continue
        if kind is Kind.REPEATED:
            pos = _repeated(buf, pos, end, wire, number, out, limits.get(number), number in decode)
            continue
        if wire != kind.value:
            raise WireError(f"field {number} has wire type {wire}, not {kind.value}", number)
        if number in out.scalars or number in out.spans:
            raise WireError(f"field {number} appears twice", number)
        if kind is Kind.VARINT:
            out.scalars[number], pos = varint(buf, pos, end)
        elif kind is Kind.FIXED32:
            if pos + 4 > end:
                raise WireError(f"field {number} runs past the message", number)
            out.scalars[number] = int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            length, pos = varint(buf, pos, end)
            if pos + length > end:
                raise WireError(f"field {number} runs past the message", number)
            out.spans[number] = (pos, pos + length)
            pos += length
    return out


def _skip(buf: memoryview, pos: int, end: int, wire: int, number: int) -> int:
    if wire == _VARINT:
        return varint(buf, pos, end)[1]
    if wire == _LEN:
        length, pos = varint(buf, pos, end)
        new = pos + length
    elif wire in _FIXED_SIZE:
        new = pos + _FIXED_SIZE[wire]
    else:  # groups (3, 4) are deprecated, 6 and 7 do not exist
        raise WireError(f"field {number} has wire type {wire}, which no message of this protocol uses", number)
    if new > end:
        raise WireError(f"field {number} runs past the message", number)
    return new


def _repeated(
    buf: memoryview, pos: int, end: int, wire: int, number: int, out: Fields, limit: int | None, keep: bool
) -> int:
    count = out.counts.get(number, 0)
    limit = limit if limit is not None else end  # never more entries than bytes
    values = out.values.setdefault(number, []) if keep else None
    if wire == _VARINT:  # one entry per tag
        if count + 1 > limit:
            raise WireError(f"field {number} holds more than {limit} entries", number, too_many=True)
        value, pos = varint(buf, pos, end)
        if values is not None:
            values.append(as_int64(value))
        out.counts[number] = count + 1
        return pos
    if wire != _LEN:
        raise WireError(f"field {number} has wire type {wire}, not a packed or single varint", number)
    length, pos = varint(buf, pos, end)
    if pos + length > end:
        raise WireError(f"field {number} runs past the message", number)
    # At least one entry per ten bytes: a span this long holds more than `limit` for sure.
    if count + -(-length // MAX_VARINT_BYTES) > limit:
        raise WireError(f"field {number} holds more than {limit} entries", number, too_many=True)
    span = np.frombuffer(buf, dtype=np.uint8, count=length, offset=pos)  # a view: nothing copied
    if length and span[-1] >= 0x80:
        raise WireError(f"the packed field {number} ends inside a varint", number)
    entries = int(np.count_nonzero(span < 0x80))  # every varint ends on exactly one byte below 0x80
    if count + entries > limit:
        raise WireError(f"field {number} holds more than {limit} entries", number, too_many=True)
    if values is not None:
        at = pos
        while at < pos + length:
            value, at = varint(buf, at, pos + length)
            values.append(as_int64(value))
    out.counts[number] = count + entries
    return pos + length

