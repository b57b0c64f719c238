"""`python -m agentmesh.demo [flags]`: the demo without the CLI."""

from __future__ import annotations

import sys

from agentmesh.demo import run_demo

if __name__ == "__main__":
    sys.exit(run_demo(sys.argv[1:]))
