"""The `agentmesh` command line: `python -m agentmesh.cli.main --help`."""
