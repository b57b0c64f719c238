"""Prometheus metrics: the `/metrics` endpoint and gRPC server metrics.

gRPC metric names follow go-grpc-prometheus so existing dashboards work:
`grpc_server_started_total`, `grpc_server_handled_total` and
`grpc_server_handling_seconds`, labelled by service, method and code. Label
values come from the fixed set of registered methods, so cardinality is bounded.
Beside them, `grpc_health_serving` mirrors the grpc.health.v1 status and
`agentmesh_dependency_up` each dependency probe, so an alert can say which
daemon stopped serving and why.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

GRPC_STARTED = Counter(
    "grpc_server_started_total", "RPCs started on the server.", ["grpc_service", "grpc_method"]
)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
GRPC_HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC, seconds.",
    ["grpc_service", "grpc_method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# The service label takes the daemon's own fully qualified service names plus
# "" (the whole server, as in grpc.health.v1), and the dependency label the
# fixed probe names ("redis", "kafka"): both bounded by the code, not by traffic.
HEALTH_SERVING = Gauge(
    "grpc_health_serving",
    "1 while grpc.health.v1 reports SERVING for the service, 0 otherwise "
    '(grpc_service="" is the whole server).',
    ["grpc_service"],
)
DEPENDENCY_UP = Gauge(
    "agentmesh_dependency_up",
    "1 while the dependency passed its last health probe, 0 otherwise.",
    ["dependency"],
)


def split_method(full_method: str) -> tuple[str, str]:
    """"/pkg.Service/Method" → ("pkg.Service", "Method")."""
    _, service, method = full_method.split("/", 2)
    return service, method


def serve_metrics(host: str, port: int) -> int:
    """Serve `/metrics` on host:port in a daemon thread.

    Args:
        port: TCP port; 0 picks a free one; a negative port disables metrics.

    Returns:
        The bound port, or -1 when disabled.

    Raises:
        OSError: when the port is taken.
    """
    if port < 0:
        return -1
    httpd, _thread = start_http_server(port, addr=host)
    return int(httpd.server_address[1])
