"""Bearer-token authentication with per-agent identity.

The tokens file is JSON. Each token maps to an identity string, or to an
object with `identity` and `roles`:

    {"s3cr3t-a": "agent-calc-1",
     "s3cr3t-ops": {"identity": "ops", "roles": ["admin"]}}

Agents authenticate as themselves, so the registry can check that an agent
heartbeats or deregisters only itself; `admin` may act on any agent.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path

from agentmesh.runtime.context import Principal
from agentmesh.runtime.errors import Unauthenticated

#: Methods that never need a token, so probes and grpcurl discovery work.
PUBLIC_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class TokenAuthenticator:
    """Maps bearer tokens to principals.

    Raises:
        ValueError: from `from_file` when the file is not the documented JSON shape.
    """

    def __init__(self, tokens: dict[str, Principal]) -> None:
        self._tokens = tokens

    @classmethod
    def from_file(cls, path: str | Path) -> TokenAuthenticator:
        """Load the JSON tokens file described in the module docstring."""
        raw = json.loads(Path(path).read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object of token -> identity")
        tokens: dict[str, Principal] = {}
        for token, value in raw.items():
            if isinstance(value, str):
                tokens[token] = Principal(value)
            elif isinstance(value, dict) and isinstance(value.get("identity"), str):
                tokens[token] = Principal(value["identity"], frozenset(value.get("roles", [])))
            else:
                raise ValueError(f"{path}: token entries must be a string or {{identity, roles}}")
        return cls(tokens)

    def authenticate(self, authorization: str | None) -> Principal:
        """Principal for an `authorization: Bearer <token>` header value.

        Raises:
            Unauthenticated: when the header is missing, malformed or unknown.
        """
        if not authorization:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        # Compare every token in constant time so timing does not leak a prefix.
        found: Principal | None = None
        for known, principal in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.strip().encode()):
                found = principal
        if found is None:
            raise Unauthenticated("unknown bearer token")
        return found
