"""Provenance hashes of mesh records that a reader can check from the record alone.

A swarm record carries `Swarm.provenance_hash`: the SHA-256 of its own
deterministic protobuf serialisation with that field empty (see swarm.proto).
The swarm engine stamps it on every write; anyone holding a GetSwarm response
recomputes it with `swarm_provenance_hash` and compares (`verify_swarm`).
"""

from __future__ import annotations

import hashlib
import hmac

from agentmesh.swarm.v1 import swarm_pb2


def swarm_provenance_hash(swarm: swarm_pb2.Swarm) -> str:
    """Lowercase hex SHA-256 of `swarm` serialised deterministically with
    `provenance_hash` empty; `swarm` itself is not changed.

    Deterministic serialisation writes map entries sorted by key, so two equal
    records give equal bytes in Python and Go (protobuf's own guarantee for one
    schema version; a reader with a newer schema keeps unknown fields, which
    serialise after the known ones, and still agrees).
    """
    if swarm.provenance_hash:
        copy = swarm_pb2.Swarm()
        copy.CopyFrom(swarm)
        copy.provenance_hash = ""
        swarm = copy
    return hashlib.sha256(swarm.SerializeToString(deterministic=True)).hexdigest()


def stamp_swarm(swarm: swarm_pb2.Swarm) -> None:
    """Set `swarm.provenance_hash` to the hash of its current contents, in place."""
    swarm.provenance_hash = ""
    swarm.provenance_hash = swarm_provenance_hash(swarm)


def verify_swarm(swarm: swarm_pb2.Swarm) -> bool:
    """True when `swarm.provenance_hash` matches its contents (constant-time compare)."""
    return bool(swarm.provenance_hash) and hmac.compare_digest(
        swarm.provenance_hash, swarm_provenance_hash(swarm)
    )
