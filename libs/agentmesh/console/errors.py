"""A mesh status as the console's status page.

Whatever the API refuses, the page shows the same status the API returned:
its code name (PERMISSION_DENIED, NOT_FOUND, ...), its message, the ErrorInfo
reason and the field violations, under the HTTP status that matches the code.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from starlette.requests import Request
from starlette.responses import Response

from agentmesh.console.views import render
from agentmesh.runtime.errors import AgentMeshError

#: HTTP status of each gRPC code (google.rpc's mapping, AIP-193); others 500.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


async def mesh_error_page(request: Request, exc: Exception) -> Response:
    """Starlette exception handler: the status page of an AgentMeshError."""
    assert isinstance(exc, AgentMeshError)
    bad = exc.detail(error_details_pb2.BadRequest)
    violations = (
        [(v.field, v.description) for v in bad.field_violations]
        if isinstance(bad, error_details_pb2.BadRequest) else []
    )
    return render(
        request, "status.html",
        {"code": exc.code.name, "message": exc.message, "reason": exc.reason,
         "violations": violations},
        status_code=HTTP_STATUS.get(exc.code, 500),
    )
