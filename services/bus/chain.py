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
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from agentmesh.bus.v1 import bus_pb2
from services.bus import wire

ZERO_HASH = "0" * 64


def link_hash(previous_hash: str, value: bytes) -> str:
    """Hex SHA-256 of the previous hash's raw bytes followed by `value`."""
    return hashlib.sha256(bytes.fromhex(previous_hash) + value).hexdigest()


@dataclass(slots=True)
class _ChainState:
    chain_id: str
    sequence: int
    last_hash: str


class ChainWriter:
    """Extends per-partition chains; call `link` in write order.

    Args:
        writer_id: this process's writer id.
    """

    def __init__(self, writer_id: str) -> None:
        self.writer_id = writer_id
        self._chains: dict[tuple[str, int], _ChainState] = {}
        self._epochs: dict[tuple[str, int], int] = {}

    def link(self, env: bus_pb2.Envelope, partition: int, *, now_ms: int) -> tuple[bytes, str]:
        """Fill `env.provenance` as the next link and serialize it.

        Returns:
            (value bytes to store, hex hash of the link).
        """
        tp = (env.topic, partition)
        st = self._chains.get(tp)
        if st is None:
            epoch = self._epochs.get(tp, 0)
            st = _ChainState(f"{env.topic}/{partition}/{self.writer_id}.{epoch}", 0, ZERO_HASH)
            self._chains[tp] = st
        p = env.provenance
        p.Clear()
        p.chain_id = st.chain_id
        p.sequence = st.sequence + 1
        p.previous_hash = st.last_hash
        p.create_time.seconds, ms = divmod(now_ms, 1000)
        p.create_time.nanos = ms * 1_000_000
        value = env.SerializeToString(deterministic=True)
        h = link_hash(st.last_hash, value)
        st.sequence += 1
        st.last_hash = h
        return value, h

    def reset(self, topic: str, partition: int) -> None:
        """Start a new chain for the partition (after a failed write)."""
        tp = (topic, partition)
        if self._chains.pop(tp, None) is not None:
            self._epochs[tp] = self._epochs.get(tp, 0) + 1


def verify(records: Iterable[wire.StoredRecord]) -> bus_pb2.VerifyChainResponse:
    """Check every link of the records (one partition, offset order).

    A chain's first link seen in the range is its anchor: its own hash is
    checked, and its previous_hash must be zeros when its sequence is 1. Each
    later link must follow with sequence + 1 and the previous link's hash.

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
    return out
