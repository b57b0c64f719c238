"""The in-memory idempotency store and Struct conversion."""

from __future__ import annotations

import numpy as np
import pytest

from agentmesh.agent import MemoryIdempotencyStore, StoredResult, dict_to_struct, struct_to_dict
from agentmesh.agent.sdk import map_exception
from agentmesh.runtime.errors import Internal, InvalidArgument, NotFound


async def test_memory_store_first_writer_wins_and_namespaces_are_separate() -> None:
    s = MemoryIdempotencyStore()
    await s.put("x", "k", StoredResult("a", {"v": 1}, 1))
    await s.put("x", "k", StoredResult("a", {"v": 2}, 2))
    got = await s.get("x", "k")
    assert got is not None and got.output == {"v": 1}
    assert await s.get("c", "k") is None


async def test_memory_store_is_bounded_and_expires() -> None:
    s = MemoryIdempotencyStore(max_entries=2)
    for i in range(3):
        await s.put("x", str(i), StoredResult("a", {}, i))
    assert await s.get("x", "0") is None
    assert await s.get("x", "2") is not None
    expired = MemoryIdempotencyStore(ttl_s=-1)
    await expired.put("x", "k", StoredResult("a", {}, 0))
    assert await expired.get("x", "k") is None


def test_stored_result_round_trips() -> None:
    r = StoredResult("calc", {"a": [1, "b"]}, 42)
    assert StoredResult.from_json(r.to_json()) == r


def test_struct_conversion_handles_numpy_and_rejects_objects() -> None:
    s = dict_to_struct({"x": np.int64(3), "arr": np.array([1.5]), "t": (1, 2)})
    assert struct_to_dict(s) == {"x": 3.0, "arr": [1.5], "t": [1.0, 2.0]}
    with pytest.raises(TypeError):
        dict_to_struct({"o": object()})


def test_map_exception_keeps_mesh_errors() -> None:
    e = NotFound("gone")
    assert map_exception(e, "a") is e
    assert isinstance(map_exception(KeyError("k"), "a"), InvalidArgument)
    assert isinstance(map_exception(ZeroDivisionError(), "a"), Internal)
