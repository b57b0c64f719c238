"""The mesh console: a web UI over the public client SDK (`agentmesh console`).

    from agentmesh.console.app import create_app
    from agentmesh.console.settings import ConsoleSettings
    app = create_app(ConsoleSettings(targets={...}, token="..."))

Modules: `settings` (what the console is told), `mesh` (the one Client and the
caller's token per request), `errors` (a mesh status as the status page),
`views` (Jinja environment and filters), `drain` (bounded reads of Watch
streams), `svg` (the swarm convergence plot), `pages/*` (one module per page
group), `app` (routes), `server` (uvicorn on a port of its own).
See README.md beside this file.
"""
