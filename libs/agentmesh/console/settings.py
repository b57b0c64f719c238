"""What the console is told at startup: where the daemons are, how to reach them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ConsoleSettings:
    """Settings of one console process.

    Attributes:
        targets: daemon name ("registry", "router", "bus", "saga", "swarm") -> host:port.
        token: bearer token of the calls of a request that brings none of its own
            (a request's `Authorization: Bearer` header wins, e.g. from a proxy).
        tls_ca_file: PEM CA of the daemons' TLS; empty for plaintext.
        client_cert_file: PEM client certificate for mTLS; empty for none.
        client_key_file: its PEM key.
        call_timeout_s: deadline of each unary call, seconds.
        jaeger_url: base URL of Jaeger's UI (`http://host:16686`); empty hides
            the trace links.
        bus_metrics_url: the bus gateway's Prometheus endpoint
            (`http://host:9101/metrics`), read for consumer lag; empty hides lag.
        rate_limiters: names of rate limiters shown on the Router page (the API
            has no list call for them; others can be looked up by name there).
        list_limit: most rows a list page reads (page tokens followed up to it).
        stream_idle_s: a history read from a Watch stream ends after this long
            without a new item (the stream of a live object never ends by itself).
        stream_total_s: and after this long in all, seconds.
    """

    targets: dict[str, str] = field(default_factory=dict)
    token: str = ""
    tls_ca_file: str = ""
    client_cert_file: str = ""
    client_key_file: str = ""
    call_timeout_s: float = 10.0
    jaeger_url: str = ""
    bus_metrics_url: str = ""
    rate_limiters: tuple[str, ...] = ()
    list_limit: int = 500
    stream_idle_s: float = 0.4
    stream_total_s: float = 2.0
