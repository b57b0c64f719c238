"""Which targets name several replicas (`balanced_target`): address lists become
gRPC `ipv4:`/`ipv6:` lists with host names resolved and the first host as the
authority, DNS URIs pass on, one address is left alone, bad lists fail clearly."""

from __future__ import annotations

import pytest

from agentmesh.runtime.channels import balanced_target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("127.0.0.1:5001", None),
        ("localhost:5001", None),
        ("unix:/tmp/agentmesh.sock", None),
        ("ipv4:127.0.0.1:5001", None),
        ("127.0.0.1:5001,127.0.0.1:5002", ("ipv4:127.0.0.1:5001,127.0.0.1:5002", "127.0.0.1:5001")),
        (
            "localhost:5001, 127.0.0.1:5002",
            ("ipv4:127.0.0.1:5001,127.0.0.1:5002", "localhost:5001"),
        ),
        ("[::1]:5001,[::1]:5002", ("ipv6:[::1]:5001,[::1]:5002", "[::1]:5001")),
        ("dns:///registry.mesh.svc:50053", ("dns:///registry.mesh.svc:50053", "")),
        ("ipv4:10.0.0.1:1,10.0.0.2:1", ("ipv4:10.0.0.1:1,10.0.0.2:1", "")),
    ],
)
def test_replica_targets(target: str, expected: tuple[str, str] | None) -> None:
    assert balanced_target(target) == expected


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("127.0.0.1,127.0.0.1:2", "is not host:port"),
        ("127.0.0.1:1,127.0.0.1:x", "is not host:port"),
        ("127.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
        ("127.0.0.1:1,no-such-host.invalid:2", "cannot resolve 'no-such-host.invalid'"),
    ],
)
def test_bad_replica_lists_fail_clearly(target: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        balanced_target(target)
