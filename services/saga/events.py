"""SHA-256 provenance chain of a saga's event log.

hash_n = SHA-256(bytes.fromhex(hash_{n-1}) || SerializeToString(event_n with
provenance cleared, deterministic=True)); hash_0 is 64 zeros. Deterministic
serialization is stable for one protobuf runtime, which is what verifies it
here; a verifier in another language re-serializes with the same field order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from agentmesh.saga.v1 import saga_pb2

GENESIS = "0" * 64


def link_hash(previous_hash: str, ev: saga_pb2.SagaEvent) -> str:
    """The chain hash of `ev` (its provenance is ignored)."""
    body = saga_pb2.SagaEvent()
    body.CopyFrom(ev)
    body.ClearField("provenance")
    return hashlib.sha256(
        bytes.fromhex(previous_hash) + body.SerializeToString(deterministic=True)
    ).hexdigest()


def seal(ev: saga_pb2.SagaEvent, previous_hash: str) -> str:
    """Fill `ev.provenance` (chain = saga id) and return its hash."""
    h = link_hash(previous_hash, ev)
    p = ev.provenance
    p.chain_id = ev.saga_id
    p.sequence = ev.sequence
    p.previous_hash = previous_hash
    p.hash = h
    p.create_time.CopyFrom(ev.create_time)
    return h


def verify_chain(events: Iterable[saga_pb2.SagaEvent]) -> int:
    """Check a log from sequence 1; returns the number of events checked.

    Raises:
        ValueError: naming the first event whose link does not hold.
    """
    prev = GENESIS
    n = 0
    for ev in events:
        n += 1
        if ev.sequence != n or ev.provenance.previous_hash != prev:
            raise ValueError(f"event {ev.sequence}: previous_hash does not chain")
        if link_hash(prev, ev) != ev.provenance.hash:
            raise ValueError(f"event {ev.sequence}: hash mismatch")
        prev = ev.provenance.hash
    return n
