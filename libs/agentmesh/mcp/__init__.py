"""The mesh as MCP tools: `agentmesh mcp serve` (stdio or streamable HTTP).

Needs the `mcp` extra (`pip install 'agentmesh[mcp]'`). See README.md here.
"""

from __future__ import annotations

from agentmesh.mcp.schema import message_schema
from agentmesh.mcp.server import MeshServer, MeshServerOptions
from agentmesh.mcp.tools import TOOLS, ToolSpec, call_tool

__all__ = ["TOOLS", "MeshServer", "MeshServerOptions", "ToolSpec", "call_tool", "message_schema"]
