"""The console's Starlette app: the routes of every page, static files, the
status page for mesh errors, and the client's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from agentmesh.console.errors import mesh_error_page
from agentmesh.console.mesh import Mesh
from agentmesh.console.pages import agents, bus, router, sagas, swarms, tasks
from agentmesh.console.settings import ConsoleSettings
from agentmesh.console.views import HERE
from agentmesh.runtime.errors import AgentMeshError


async def _home(request: Request) -> Response:
    return RedirectResponse("/agents", status_code=307)


async def _healthz(request: Request) -> Response:
    # The probe of the Helm Deployment: the process serves; the mesh's own
    # health is each daemon's business.
    return PlainTextResponse("ok")


def create_app(settings: ConsoleSettings) -> Starlette:
    """The console app for `settings` (its Client opens on startup, closes on shutdown)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        mesh = Mesh(settings)
        app.state.mesh = mesh
        try:
            yield
        finally:
            await mesh.close()

    routes: list[BaseRoute] = [
        Route("/", _home),
        Route("/healthz", _healthz),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
        *agents.routes, *sagas.routes, *tasks.routes, *swarms.routes, *bus.routes,
        *router.routes,
    ]
    return Starlette(
        routes=routes, lifespan=lifespan,
        exception_handlers={AgentMeshError: mesh_error_page},
    )
