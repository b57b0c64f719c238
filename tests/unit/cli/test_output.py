"""CLI tables keep ids whole: a cell wider than its column folds onto more
lines instead of being elided, whatever the terminal width."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from agentmesh.cli import output

IDS = [f"agent-carbon-calculator-{i:04d}-eu-west-1a" for i in range(3)]


@pytest.mark.parametrize("width", [40, 80, 200])
def test_table_folds_long_ids_instead_of_eliding(
    monkeypatch: pytest.MonkeyPatch, width: int
) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(output, "console", Console(file=buf, width=width, color_system=None))
    rows = [{"agent_id": i, "endpoint": "127.0.0.1:50061", "health": 0.98} for i in IDS]
    output.print_table(rows, ["agent_id", "endpoint", "health"])
    text = buf.getvalue()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    # Each id is there in full once the table's borders and padding are removed.
    cells = "".join(
        line.split("│")[1].strip() for line in text.splitlines() if line.count("│") >= 2
    )
    for i in IDS:
        assert i in cells, (i, text)
