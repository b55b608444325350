"""The bridge service's settings, read from ``QE_*`` environment variables.

Storage and backend choices stay in :class:`quant_engine.config.Settings`; this object holds only
what the long-lived service adds: where the feed is, where to listen, who may subscribe, which
model serves, and the limits of the buffer and the publisher.

=============================  ========================  ====================================================
variable                       default                   meaning
=============================  ========================  ====================================================
``QE_FEED_URL``                ``ws://127.0.0.1:8765``   yfinance-compatible feed (the replay server, Yahoo)
``QE_BRIDGE_HOST``             ``127.0.0.1``             interface the publisher listens on
``QE_BRIDGE_PORT``             ``8766``                  WebSocket + HTTP port
``QE_BRIDGE_TOKENS``           (none: nobody may)        comma-separated subscriber tokens
``QE_BRIDGE_TICKERS``          every stored ticker       comma-separated tickers to subscribe to
``QE_BRIDGE_MODEL``            ``local``                 ``local`` (registry champion) or ``sagemaker``
``QE_SAGEMAKER_ENDPOINT``      (required for sagemaker)  endpoint name
``QE_BRIDGE_MODEL_NAME``       the registry's default    registry model name
``QE_BRIDGE_FEATURE_SET``      ``default``               the feature set ingestion computed
``QE_BRIDGE_BUFFER_SIZE``      ``10000``                 ticks the ingest buffer holds
``QE_BRIDGE_BUFFER_POLICY``    by bar size               ``coalesce`` (daily default) or ``drop_oldest``
                                                         (intraday: the only exact one)
``QE_BRIDGE_BAR_SIZE``         the group's               refused at start unless the group's (a check)
``QE_BRIDGE_CALENDAR``         the group's               refused at start unless the group's (a check)
``QE_BRIDGE_STALE_S``          ``30``                    feed silence (s) before reconnecting
``QE_BRIDGE_VOL_POLICY``       ``suppress``              ``suppress`` or ``scale`` out-of-range signals
``QE_BRIDGE_LOG_BATCH``        ``256``                   predictions per prediction-log file
``QE_BRIDGE_LOG_FLUSH_S``      ``60``                    longest a prediction waits to be logged (s)
``QE_BRIDGE_RELOAD_S``         ``30``                    how often to look for a new champion (s)
``QE_BRIDGE_MAX_SIZE``         ``65536``                 largest subscriber message (bytes)
``QE_BRIDGE_CLIENT_QUEUE``     ``1024``                  signals queued per subscriber before dropping
=============================  ========================  ====================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from quant_engine.bridge.buffer import OVERLOAD_POLICIES
from quant_engine.bridge.state import VOL_POLICIES
from quant_engine.calendars import CalendarError, MarketTime
from quant_engine.config import SettingsError, env_overrides

__all__ = ["MODEL_SOURCES", "BridgeSettings"]

MODEL_SOURCES: tuple[str, ...] = ("local", "sagemaker")

_TEXT = {
    "feed_url": "QE_FEED_URL", "host": "QE_BRIDGE_HOST", "model_source": "QE_BRIDGE_MODEL",
    "sagemaker_endpoint": "QE_SAGEMAKER_ENDPOINT", "model_name": "QE_BRIDGE_MODEL_NAME",
    "feature_set": "QE_BRIDGE_FEATURE_SET", "buffer_policy": "QE_BRIDGE_BUFFER_POLICY",
    "vol_policy": "QE_BRIDGE_VOL_POLICY", "bar_size": "QE_BRIDGE_BAR_SIZE", "calendar": "QE_BRIDGE_CALENDAR",
}
_WHOLE = {
    "port": "QE_BRIDGE_PORT", "buffer_size": "QE_BRIDGE_BUFFER_SIZE", "log_batch": "QE_BRIDGE_LOG_BATCH",
    "max_size": "QE_BRIDGE_MAX_SIZE", "client_queue": "QE_BRIDGE_CLIENT_QUEUE",
}
_SECONDS = {"stale_after_s": "QE_BRIDGE_STALE_S", "reload_s": "QE_BRIDGE_RELOAD_S",
            "log_flush_s": "QE_BRIDGE_LOG_FLUSH_S"}


def _names(raw: str | None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t.strip() for t in (raw or "").split(",") if t.strip()))


@dataclass(frozen=True)
class BridgeSettings:
    """What the bridge service runs with; see the module docstring for the variables."""

    feed_url: str = "ws://127.0.0.1:8765"
    host: str = "127.0.0.1"
    port: int = 8766
    tokens: tuple[str, ...] = ()
    tickers: tuple[str, ...] = ()
    model_source: str = "local"
    sagemaker_endpoint: str | None = None
    model_name: str | None = None
    feature_set: str = "default"
    buffer_size: int = 10_000
    buffer_policy: str | None = None
    bar_size: str | None = None
    calendar: str | None = None
    stale_after_s: float = 30.0
    vol_policy: str = "suppress"
    log_batch: int = 256
    log_flush_s: float = 60.0
    reload_s: float = 30.0
    max_size: int = 65_536
    client_queue: int = 1024

    def __post_init__(self) -> None:
        if not self.feed_url.startswith(("ws://", "wss://")):
            raise SettingsError(f"QE_FEED_URL={self.feed_url!r} must be a ws:// or wss:// URL")
        if not 0 <= self.port <= 65_535:
            raise SettingsError(f"QE_BRIDGE_PORT={self.port!r} is not a port number (0-65535)")
        if self.model_source not in MODEL_SOURCES:
            raise SettingsError(f"QE_BRIDGE_MODEL={self.model_source!r} must be one of {', '.join(MODEL_SOURCES)}")
        if self.model_source == "sagemaker" and not self.sagemaker_endpoint:
            raise SettingsError("QE_BRIDGE_MODEL=sagemaker needs QE_SAGEMAKER_ENDPOINT, the endpoint to invoke")
        if self.buffer_policy is not None and self.buffer_policy not in OVERLOAD_POLICIES:
            raise SettingsError(f"QE_BRIDGE_BUFFER_POLICY={self.buffer_policy!r} must be one of "
                                f"{', '.join(OVERLOAD_POLICIES)}")
        if self.vol_policy not in VOL_POLICIES:
            raise SettingsError(f"QE_BRIDGE_VOL_POLICY={self.vol_policy!r} must be one of {', '.join(VOL_POLICIES)}")
        for name, variable in {**_WHOLE, **_SECONDS}.items():
            if name != "port" and not getattr(self, name) > 0:
                raise SettingsError(f"{variable}={getattr(self, name)!r} must be > 0")

    def check_market_time(self, group: MarketTime) -> str:
        """The buffer policy for the group's bars; a bar size or calendar named here must be the group's."""
        try:
            named = MarketTime(self.calendar or group.calendar, self.bar_size or group.bar_size)
        except CalendarError as exc:
            raise SettingsError(f"QE_BRIDGE_BAR_SIZE / QE_BRIDGE_CALENDAR: {exc}") from None
        if named != group:
            raise SettingsError(f"the bridge is set for {named.describe()} but its feature group holds "
                                f"{group.describe()}; unset QE_BRIDGE_BAR_SIZE / QE_BRIDGE_CALENDAR or serve "
                                "another group (QE_FEATURE_GROUP)")
        policy = self.buffer_policy or ("coalesce" if group.size.is_daily else "drop_oldest")
        if policy == "coalesce" and not group.size.is_daily:
            raise SettingsError(f"QE_BRIDGE_BUFFER_POLICY=coalesce is exact for daily bars only, not "
                                f"{group.describe()}: use drop_oldest")
        return policy

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BridgeSettings:
        """Read the settings from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {**env_overrides(env, _TEXT), **env_overrides(env, _WHOLE, tuple(_WHOLE))}
        for name, variable in _SECONDS.items():
            raw = env.get(variable)
            if raw:
                try:
                    values[name] = float(raw)
                except ValueError:
                    raise SettingsError(f"{variable}={raw!r} is not a number of seconds") from None
        if "model_source" in values:
            values["model_source"] = str(values["model_source"]).lower()
        return cls(tokens=_names(env.get("QE_BRIDGE_TOKENS")), tickers=_names(env.get("QE_BRIDGE_TICKERS")),
                   **values)  # type: ignore[arg-type]
