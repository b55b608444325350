"""One feature group's stores, handed to ingestion as one object by whoever built them.

A feature group lives in several places at once: the offline store (features), the offline store
of its bars (``<group>_bars``), the online store and, on AWS when configured, a SageMaker Feature
Store group it is mirrored into. Ingestion writes them all in one unit, so it takes them together;
which backend each runs on was decided by the composition root (:mod:`quant_engine.backends`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd

from quant_engine.features.offline_store import OfflineStore
from quant_engine.features.online_store import OnlineStore

__all__ = ["BARS_GROUP_SUFFIX", "GroupStores", "RecordMirror", "bars_group_name"]

BARS_GROUP_SUFFIX = "_bars"


def bars_group_name(feature_group: str) -> str:
    """The offline group that holds a feature group's bars."""
    return f"{feature_group}{BARS_GROUP_SUFFIX}"


class RecordMirror(Protocol):
    """A copy of the feature rows kept elsewhere (the SageMaker Feature Store group)."""

    def write(self, frame: pd.DataFrame) -> Any: ...


@dataclass(frozen=True)
class GroupStores:
    """The stores of one feature group.

    ``bars`` must be the group named :func:`bars_group_name` of ``offline``'s group, in the same storage.
    """

    offline: OfflineStore
    bars: OfflineStore
    online: OnlineStore
    mirror: RecordMirror | None = None

    def __post_init__(self) -> None:
        if self.bars.feature_group != bars_group_name(self.offline.feature_group):
            raise ValueError(
                f"the bars of feature group {self.offline.feature_group!r} belong in "
                f"{bars_group_name(self.offline.feature_group)!r}, not {self.bars.feature_group!r}"
            )

    @property
    def name(self) -> str:
        """The feature group's name."""
        return self.offline.feature_group
