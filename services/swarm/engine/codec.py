"""Exact, strictly-JSON encodings for snapshot fields.

Snapshots go to Redis as JSON and must restore bit-for-bit, so:

* arrays are stored as base64 of their little-endian bytes with dtype and
  shape (exact, compact, and NaN/inf survive);
* scalar floats as ``float.hex`` strings (exact; ``"inf"`` survives, which
  strict JSON cannot carry as a number);
* the numpy bit-generator state has 128-bit integers (PCG64), which JSON
  parsers other than Python's (orjson, JavaScript) cannot hold, so every int
  inside it is stored as a decimal string.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import SnapshotError

__all__ = [
    "decode_array",
    "decode_float",
    "decode_rng",
    "encode_array",
    "encode_float",
    "encode_rng",
]

_ALLOWED_DTYPES = frozenset({"<f8", "<i8", "|i1", "|b1"})


def encode_array(arr: npt.NDArray[Any]) -> dict[str, Any]:
    """``{"dtype", "shape", "b64"}`` of a float64/int64/int8/bool array."""
    a = np.ascontiguousarray(arr)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    if a.dtype.str not in _ALLOWED_DTYPES:
        raise SnapshotError(f"cannot encode dtype {a.dtype.str}")
    return {
        "dtype": a.dtype.str,
        "shape": list(a.shape),
        "b64": base64.b64encode(a.tobytes()).decode("ascii"),
    }


def decode_array(data: Any) -> npt.NDArray[Any]:
    """Inverse of :func:`encode_array`; returns a fresh writable array.

    Raises:
        SnapshotError: If the field is malformed.
    """
    try:
        dtype = np.dtype(data["dtype"])
        if dtype.str not in _ALLOWED_DTYPES:
            raise SnapshotError(f"dtype {dtype.str} not allowed")
        shape = tuple(int(s) for s in data["shape"])
        raw = base64.b64decode(data["b64"], validate=True)
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    except SnapshotError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"bad array field: {exc}") from exc


def encode_float(x: float) -> str:
    """Exact hex form of a float (``float.hex``)."""
    return float(x).hex()


def decode_float(s: Any) -> float:
    """Inverse of :func:`encode_float`.

    Raises:
        SnapshotError: If ``s`` is not a float hex string.
    """
    try:
        return float.fromhex(s)
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"bad float field {s!r}") from exc


def _stringify_ints(obj: Any) -> Any:
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _stringify_ints(v) for k, v in obj.items()}
    return obj


def _parse_ints(obj: Any) -> Any:
    if isinstance(obj, str) and obj.lstrip("-").isdigit():
        return int(obj)
    if isinstance(obj, dict):
        return {k: _parse_ints(v) for k, v in obj.items()}
    return obj


def encode_rng(rng: np.random.Generator) -> dict[str, Any]:
    """JSON-safe bit-generator state (ints as decimal strings)."""
    state: dict[str, Any] = _stringify_ints(rng.bit_generator.state)
    return state


def decode_rng(data: Any) -> np.random.Generator:
    """Rebuilds a generator at exactly the encoded state.

    Only PCG64 (numpy's default) is accepted.

    Raises:
        SnapshotError: If the state is malformed or of another bit generator.
    """
    try:
        state = _parse_ints(data)
        if state.get("bit_generator") != "PCG64":
            raise SnapshotError(f"unsupported bit generator {state.get('bit_generator')!r}")
        bitgen = np.random.PCG64()
        bitgen.state = state
        return np.random.Generator(bitgen)
    except SnapshotError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"bad rng state: {exc}") from exc
