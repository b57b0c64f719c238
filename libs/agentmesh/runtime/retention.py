"""The retention period of finished records (sagas, swarms), shared by the
daemons that keep them: Temporal's namespace retention, as a daemon setting."""

from __future__ import annotations

from dataclasses import dataclass

from agentmesh.runtime.settings import Settings, setting

#: Default retention of finished records, s (7 days, like a Temporal namespace's default).
DEFAULT_RETENTION_S = 604_800


@dataclass(frozen=True)
class RetentionSettings(Settings):
    """The `--retention-s` setting; a daemon's settings class derives from it.

    Attributes:
        retention_s: how long a finished record's keys are kept after it ends,
            seconds; 0 keeps finished records forever.
    """

    retention_s: int = setting(
        DEFAULT_RETENTION_S,
        help="keep a finished record's keys this long after it ends (0 = forever)",
        unit="s",
        minimum=0,
    )

    @property
    def retention_ms(self) -> int:
        """`retention_s` in milliseconds (0 = forever)."""
        return self.retention_s * 1000
