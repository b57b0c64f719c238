"""The chart's `console` Deployment (issue 26): off by default; when on, one
Deployment and Service that pass strict Kubernetes schemas, run `agentmesh
console` with every daemon's in-cluster target, the TLS CA, the token from its
Secret and trace links, and pass only options the CLI has."""

from __future__ import annotations

import typer.main

from tests.deploy.chart import (
    DAEMONS,
    KUBE_VERSION,
    RELEASE,
    by_kind,
    container,
    render,
    render_error,
)

VALUES = ("ci/console-values.yaml",)
NAME = f"{RELEASE}-console"


def test_the_console_is_off_by_default() -> None:
    docs = render()
    assert NAME not in by_kind(docs, "Deployment")
    assert NAME not in by_kind(docs, "Service")


def test_the_console_deployment_and_service_validate_and_run_agentmesh_console() -> None:
    import kubernetes_validate

    docs = render(values=VALUES)
    dep, svc = by_kind(docs, "Deployment")[NAME], by_kind(docs, "Service")[NAME]
    for doc in (dep, svc):
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    c = container(dep)
    args = c["args"]
    assert args[0] == "agentmesh" and "console" in args
    for d in DAEMONS:
        assert f"--{d}={RELEASE}-{d}.agentmesh.svc:" in " ".join(args)
    assert "--tls-ca-file=/etc/agentmesh/tls/ca.crt" in args
    assert "--jaeger-url=http://jaeger-query.observability:16686" in args
    assert f"--bus-metrics-url=http://{RELEASE}-bus.agentmesh.svc:9101/metrics" in args
    assert "--rate-limiter=partner-api" in args
    env = {e["name"]: e for e in c["env"]}
    assert env["AGENTMESH_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "agentmesh-console", "key": "token"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert svc["spec"]["ports"][0]["port"] == 8088
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


def test_every_rendered_option_is_one_the_cli_has() -> None:
    from agentmesh.cli.main import app

    group = typer.main.get_command(app)
    console = group.commands["console"]  # type: ignore[attr-defined]
    known_global = {o for p in group.params for o in p.opts}
    known_console = {o for p in console.params for o in p.opts}
    args = container(by_kind(render(values=VALUES), "Deployment")[NAME])["args"]
    split = args.index("console")
    for arg in args[1:split]:
        assert arg.split("=")[0] in known_global, arg
    for arg in args[split + 1:]:
        assert arg.split("=")[0] in known_console, arg


def test_mutual_tls_is_refused_with_a_reason() -> None:
    err = render_error("console.enabled=true", "global.tls.enabled=true",
                       "global.tls.mutual=true")
    assert "presents no client certificate" in err
