"""Provenance: one SHA-256 hash chain per topic partition and writer.

    hash_n = SHA-256(raw previous_hash (32 bytes) || value_n)

where value_n is the exact serialized Envelope stored as the record value, with
provenance.{chain_id, sequence, previous_hash, create_time} filled and
provenance.hash empty; the hash travels in the "am-hash" header. Hashing the
stored bytes (not a re-serialization) makes verification independent of
protobuf serializer details. The first link's previous_hash is 64 zeros.

A chain covers one gateway process's writes to one partition; its id is
"<topic>/<partition>/<writer id>.<epoch>". The epoch moves on after a failed
write, because the failed link is missing from the log.
"""

from __future__ import annotations

import hashlib
from binascii import hexlify
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from agentmesh.bus.v1 import bus_pb2
from agentmesh.server.bus import wire
from agentmesh.server.bus.state import Head

ZERO_HASH = "0" * 64
ZERO_RAW = bytes(32)


def link_hash(previous_hash: str, value: bytes) -> str:
    """Hex SHA-256 of the previous hash's raw bytes followed by `value`."""
    return hashlib.sha256(bytes.fromhex(previous_hash) + value).hexdigest()


@dataclass(slots=True)
class _ChainState:
    chain_id: str
    #: the encoded chain_id field of Provenance, the same for every link
    chain_id_field: bytes
    sequence: int = 0
    #: the last link's hash as raw bytes (what the next hash covers) and as hex
    last_raw: bytes = ZERO_RAW
    last_hex: bytes = ZERO_HASH.encode()


class ChainWriter:
    """Extends per-partition chains; call `link` / `append_link` in write order.

    Args:
        writer_id: this process's writer id.
    """

    def __init__(self, writer_id: str) -> None:
        self.writer_id = writer_id
        self._chains: dict[tuple[str, int], _ChainState] = {}
        self._epochs: dict[tuple[str, int], int] = {}

    def _state(self, topic: str, partition: int) -> _ChainState:
        tp = (topic, partition)
        st = self._chains.get(tp)
        if st is None:
            epoch = self._epochs.get(tp, 0)
            chain_id = f"{topic}/{partition}/{self.writer_id}.{epoch}"
            st = _ChainState(chain_id, wire.len_field(wire.TAG_PROV_CHAIN_ID, chain_id.encode()))
            self._chains[tp] = st
        return st

    def link(self, env: bus_pb2.Envelope, partition: int, *, now_ms: int) -> tuple[bytes, str]:
        """Fill `env.provenance` as the next link and serialize it (the slow,
        message-based form of `append_link`, kept for tools and tests).

        Returns:
            (value bytes to store, hex hash of the link).
        """
        st = self._state(env.topic, partition)
        p = env.provenance
        p.Clear()
        p.chain_id = st.chain_id
        p.sequence = st.sequence + 1
        p.previous_hash = st.last_hex.decode()
        p.create_time.seconds, ms = divmod(now_ms, 1000)
        p.create_time.nanos = ms * 1_000_000
        value = env.SerializeToString(deterministic=True)
        raw = hashlib.sha256(st.last_raw + value).digest()
        st.sequence += 1
        st.last_raw = raw
        st.last_hex = hexlify(raw)
        return value, st.last_hex.decode()

    def append_link(
        self, topic: str, partition: int, head: bytes, create_time_field: bytes, tail: bytes
    ) -> tuple[bytes, bytes]:
        """Make the next link of (topic, partition) from encoded Envelope parts.

        The value is `head` (a serialized Envelope without provenance) +
        the encoded provenance field (chain_id, sequence, previous_hash,
        create_time) + `tail` (further encoded fields, e.g. publish_time).

        Args:
            topic / partition: the chain.
            head: serialized Envelope fields, provenance absent.
            create_time_field: the encoded Provenance.create_time field.
            tail: encoded Envelope fields to put after the provenance.

        Returns:
            (value bytes to store, hex hash of the link as ASCII bytes).
        """
        st = self._chains.get((topic, partition)) or self._state(topic, partition)
        prov = b"".join((
            st.chain_id_field,
            wire.TAG_PROV_SEQUENCE, wire.varint(st.sequence + 1),
            b"\x1a\x40", st.last_hex,  # previous_hash: 64 hex characters
            create_time_field,
        ))
        n = len(prov)
        value = b"".join((head, wire.TAG_ENV_PROVENANCE,
                          wire.SMALL_VARINTS[n] if n < 128 else wire.varint(n), prov, tail))
        raw = hashlib.sha256(st.last_raw + value).digest()
        hex_b = hexlify(raw)
        st.sequence += 1
        st.last_raw = raw
        st.last_hex = hex_b
        return value, hex_b

    def reset(self, topic: str, partition: int) -> None:
        """Start a new chain for the partition (after a failed write)."""
        tp = (topic, partition)
        if self._chains.pop(tp, None) is not None:
            self._epochs[tp] = self._epochs.get(tp, 0) + 1


def verify(
    records: Iterable[wire.StoredRecord],
    *,
    heads: Mapping[str, Head] | None = None,
    start: int = 0,
    end: int | None = None,
) -> bus_pb2.VerifyChainResponse:
    """Check every link of the records (one partition, offset order).

    A chain's first link seen in the range is its anchor: its own hash is
    checked, and its previous_hash must be zeros when its sequence is 1. Each
    later link must follow with sequence + 1 and the previous link's hash.

    Then, when no link is broken, the stored chain heads (state.Head: the last
    link of each chain whose write was confirmed): a head whose offset lies
    in [start, end) must be in the records, that is, its chain must reach its
    sequence with its hash there. Otherwise the tail was truncated
    (CHAIN_BREAK_REASON_TRUNCATED, reported at the head's offset; the lowest
    such offset when several chains are cut).

    Args:
        records: one partition's records in offset order.
        heads: chain id -> stored head of this partition; None skips the check.
        start: first offset the range covers (after the first retained
            offset: heads below it were removed by retention, not truncated).
        end: offset the range stops before; None means the partition's end,
            wherever the log now ends.

    Returns:
        The response with the first break, counts and chain ids; `end_offset`
        is left for the caller.
    """
    out = bus_pb2.VerifyChainResponse(valid=True)
    last: dict[str, tuple[int, str]] = {}
    R = bus_pb2.ChainBreakReason

    def brk(
        rec: wire.StoredRecord, chain_id: str, seq: int, reason: int, exp: str, act: str
    ) -> None:
        out.valid = False
        out.first_break.CopyFrom(
            bus_pb2.ChainBreak(
                offset=rec.offset, chain_id=chain_id, sequence=seq, reason=reason,  # type: ignore[arg-type]
                expected=exp, actual=act,
            )
        )

    for rec in records:
        header_hash = rec.header(wire.H_HASH)
        if not wire.is_envelope(rec) and header_hash is None:
            out.unchained_records += 1
            continue
        out.records_checked += 1
        try:
            env = bus_pb2.Envelope.FromString(rec.value or b"")
        except DecodeError as exc:
            brk(rec, "", 0, R.CHAIN_BREAK_REASON_MALFORMED,
                "an Envelope value", f"undecodable value: {exc}")
            break
        p = env.provenance
        if not p.chain_id or header_hash is None or len(p.previous_hash) != 64:
            brk(rec, p.chain_id, p.sequence, R.CHAIN_BREAK_REASON_MALFORMED,
                "chain_id, previous_hash and am-hash", "missing")
            break
        try:
            actual = link_hash(p.previous_hash, rec.value or b"")
        except ValueError:
            brk(rec, p.chain_id, p.sequence, R.CHAIN_BREAK_REASON_MALFORMED,
                "hex previous_hash", p.previous_hash)
            break
        if actual != header_hash:
            brk(rec, p.chain_id, p.sequence, R.CHAIN_BREAK_REASON_HASH_MISMATCH,
                actual, header_hash)
            break
        prev = last.get(p.chain_id)
        if prev is None:
            out.chain_ids.append(p.chain_id)
            if p.sequence == 1 and p.previous_hash != ZERO_HASH:
                brk(rec, p.chain_id, p.sequence, R.CHAIN_BREAK_REASON_PREVIOUS_HASH_MISMATCH,
                    ZERO_HASH, p.previous_hash)
                break
        else:
            if p.sequence != prev[0] + 1:
                brk(rec, p.chain_id, p.sequence, R.CHAIN_BREAK_REASON_SEQUENCE_GAP,
                    str(prev[0] + 1), str(p.sequence))
                break
            if p.previous_hash != prev[1]:
                brk(rec, p.chain_id, p.sequence, R.CHAIN_BREAK_REASON_PREVIOUS_HASH_MISMATCH,
                    prev[1], p.previous_hash)
                break
        last[p.chain_id] = (p.sequence, header_hash)
    if out.valid and heads:
        _check_heads(out, last, heads, start, end)
    return out


def _check_heads(
    out: bus_pb2.VerifyChainResponse,
    last: dict[str, tuple[int, str]],
    heads: Mapping[str, Head],
    start: int,
    end: int | None,
) -> None:
    """Set `out.first_break` to TRUNCATED for the lowest head in [start, end)
    that the records do not reach (see `verify`)."""
    cut: tuple[int, str, Head, str] | None = None
    for chain_id, h in heads.items():
        if h.offset < start or (end is not None and h.offset >= end):
            continue
        seen = last.get(chain_id)
        if seen is None:
            actual = "no link of the chain in the partition"
        elif seen[0] < h.sequence:
            actual = f"the chain ends at sequence {seen[0]}"
        else:
            continue  # reached (a later link may be stored after its head)
        if cut is None or h.offset < cut[0]:
            cut = (h.offset, chain_id, h, actual)
    if cut is None:
        return
    offset, chain_id, h, actual = cut
    out.valid = False
    out.first_break.CopyFrom(bus_pb2.ChainBreak(
        offset=offset, chain_id=chain_id, sequence=h.sequence,
        reason=bus_pb2.CHAIN_BREAK_REASON_TRUNCATED,
        expected=f"link {h.sequence} (hash {h.hash}) at offset {offset}", actual=actual,
    ))
