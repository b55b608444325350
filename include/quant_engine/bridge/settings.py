"""The bridge service's settings, read from ``QE_*`` environment variables.

Storage and backend choices stay in :class:`quant_engine.config.Settings`; this object holds only
what the long-lived service adds: where the feed is, where to listen, who may subscribe, which
model serves, the clock ticks are judged by, and the limits of the buffer, the publisher and the
endpoint. Every value is checked here; a bad one is a :class:`~quant_engine.config.SettingsError`
naming its variable.

=========================================  ========================  ================================================
variable                                   default                   meaning
=========================================  ========================  ================================================
``QE_FEED_URL``                            ``ws://127.0.0.1:8765``   yfinance-compatible feed (the replay server, Yahoo)
``QE_BRIDGE_HOST``                         ``127.0.0.1``             interface the publisher listens on
``QE_BRIDGE_PORT``                         ``8766``                  WebSocket + HTTP port
``QE_BRIDGE_TOKENS``                       (none: nobody may)        comma-separated subscriber tokens
``QE_BRIDGE_TICKERS``                      every stored ticker       comma-separated tickers to subscribe to
``QE_BRIDGE_MODEL``                        ``local``                 ``local`` (registry champion) or ``sagemaker``
``QE_SAGEMAKER_ENDPOINT``                  (required for sagemaker)  endpoint name
``QE_BRIDGE_MODEL_NAME``                   the registry's default    registry model name
``QE_BRIDGE_FEATURE_SET``                  ``default``               the feature set ingestion computed
``QE_BRIDGE_BUFFER_SIZE``                  ``10000``                 ticks the ingest buffer holds
``QE_BRIDGE_BUFFER_POLICY``                by bar size               ``coalesce`` (daily default) or ``drop_oldest``
                                                                     (intraday: the only exact one)
``QE_BRIDGE_BAR_SIZE``                     the group's               refused at start unless the group's (a check)
``QE_BRIDGE_CALENDAR``                     the group's               refused at start unless the group's (a check)
``QE_BRIDGE_STALE_S``                      ``30``                    feed silence (s) before reconnecting
``QE_BRIDGE_VOL_POLICY``                   ``suppress``              ``suppress`` or ``scale`` out-of-range signals
``QE_BRIDGE_LOG_BATCH``                    ``256``                   predictions per prediction-log file
``QE_BRIDGE_LOG_FLUSH_S``                  ``60``                    longest a prediction waits to be logged (s)
``QE_BRIDGE_RELOAD_S``                     ``30``                    how often to look for a new champion (s)
``QE_BRIDGE_MAX_SIZE``                     ``65536``                 largest subscriber message (bytes)
``QE_BRIDGE_CLIENT_QUEUE``                 ``1024``                  signals queued per subscriber before dropping
``QE_BRIDGE_MAX_CONNECTIONS``              ``256``                   open connections in all (subscribers, HTTP,
                                                                     handshakes); more get HTTP 503 + Retry-After;
                                                                     lowered to fit ``RLIMIT_NOFILE``
``QE_BRIDGE_MAX_CONNECTIONS_PER_ADDRESS``  ``32``                    the same, per client IP address
``QE_BRIDGE_HANDSHAKE_TIMEOUT_S``          ``5``                     accept to complete request, and to a
                                                                     subscriber's first message (s)
``QE_BRIDGE_MAX_SUBSCRIPTIONS``            ``1000``                  tickers one subscriber may follow
``QE_BRIDGE_MAX_DEPTH``                    ``4``                     nesting of a subscriber message (>= 2)
``QE_BRIDGE_CONTROL_RATE``                 ``20``                    subscriber messages answered per second and
                                                                     connection (faster ones wait)
``QE_BRIDGE_TLS_CERT``                     (none)                    PEM certificate: the publisher speaks TLS
``QE_BRIDGE_TLS_KEY``                      (none)                    its PEM private key (both or neither)
``QE_BRIDGE_CLOCK``                        ``auto``                  reference clock: ``auto``, ``wall`` or ``replay``
``QE_BRIDGE_CLOCK_POLL_S``                 ``1``                     how often the replay feed's /health is read (s)
``QE_BRIDGE_MAX_SKEW_S``                   ``60``                    a tick further ahead of the reference clock is
                                                                     dropped as ``future_time`` (s)
``QE_BRIDGE_CLOSE_GRACE_S``                ``300``                   a bar still open this long after the reference
                                                                     clock passed its close is closed (s)
``QE_BRIDGE_ENDPOINT_TIMEOUT_S``           ``2``                     longest wait for one endpoint call (s)
``QE_BRIDGE_ENDPOINT_RETRIES``             ``2``                     further attempts after a failed call
``QE_BRIDGE_ENDPOINT_WORKERS``             ``4``                     endpoint calls at once (threads)
``QE_BRIDGE_BREAKER_FAILURES``             ``5``                     consecutive failures that open the circuit
``QE_BRIDGE_BREAKER_RESET_S``              ``30``                    open circuit's pause before a trial call (s)
``QE_BRIDGE_FALLBACK``                     ``none``                  ``local``: the champion answers while the
                                                                     endpoint cannot; ``none``: signals degrade
``QE_BRIDGE_ONLINE``                       ``on``                    online recalibration of the local champion
                                                                     between retrains (:mod:`quant_engine.online`)
``QE_BRIDGE_ONLINE_FORGETTING``            ``0.995``                 its weight of the past per label (0.5-1)
``QE_BRIDGE_ONLINE_MAX_SHIFT``             ``0.1``                   most the adapted probability may move (<= 0.5)
``QE_BRIDGE_ONLINE_MIN_LABELS``            ``100``                   labels judged before its rolling log-loss may
                                                                     switch it off
=========================================  ========================  ================================================
"""

from __future__ import annotations

import math
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from quant_engine.bridge.buffer import OVERLOAD_POLICIES
from quant_engine.bridge.clock import CLOCK_MODES
from quant_engine.bridge.state import VOL_POLICIES
from quant_engine.calendars import CalendarError, MarketTime
from quant_engine.config import SettingsError, env_overrides

__all__ = ["FALLBACKS", "MODEL_SOURCES", "ONLINE_MODES", "BridgeSettings"]

MODEL_SOURCES: tuple[str, ...] = ("local", "sagemaker")
#: What answers while a SageMaker endpoint cannot: nothing (signals degrade) or the local champion.
FALLBACKS: tuple[str, ...] = ("none", "local")
ONLINE_MODES: tuple[str, ...] = ("on", "off")

_TEXT = {
    "feed_url": "QE_FEED_URL",
    "host": "QE_BRIDGE_HOST",
    "model_source": "QE_BRIDGE_MODEL",
    "sagemaker_endpoint": "QE_SAGEMAKER_ENDPOINT",
    "model_name": "QE_BRIDGE_MODEL_NAME",
    "feature_set": "QE_BRIDGE_FEATURE_SET",
    "buffer_policy": "QE_BRIDGE_BUFFER_POLICY",
    "vol_policy": "QE_BRIDGE_VOL_POLICY",
    "bar_size": "QE_BRIDGE_BAR_SIZE",
    "calendar": "QE_BRIDGE_CALENDAR",
    "clock": "QE_BRIDGE_CLOCK",
    "fallback": "QE_BRIDGE_FALLBACK",
    "online": "QE_BRIDGE_ONLINE",
    "tls_cert": "QE_BRIDGE_TLS_CERT",
    "tls_key": "QE_BRIDGE_TLS_KEY",
}
#: Whole numbers and the least each may be.
_WHOLE = {
    "port": ("QE_BRIDGE_PORT", 0),
    "buffer_size": ("QE_BRIDGE_BUFFER_SIZE", 1),
    "log_batch": ("QE_BRIDGE_LOG_BATCH", 1),
    "max_size": ("QE_BRIDGE_MAX_SIZE", 64),
    "client_queue": ("QE_BRIDGE_CLIENT_QUEUE", 1),
    "max_connections": ("QE_BRIDGE_MAX_CONNECTIONS", 1),
    "max_connections_per_address": ("QE_BRIDGE_MAX_CONNECTIONS_PER_ADDRESS", 1),
    "max_subscriptions": ("QE_BRIDGE_MAX_SUBSCRIPTIONS", 1),
    "max_depth": ("QE_BRIDGE_MAX_DEPTH", 2),
    "endpoint_retries": ("QE_BRIDGE_ENDPOINT_RETRIES", 0),
    "endpoint_workers": ("QE_BRIDGE_ENDPOINT_WORKERS", 1),
    "breaker_failures": ("QE_BRIDGE_BREAKER_FAILURES", 1),
    "online_min_labels": ("QE_BRIDGE_ONLINE_MIN_LABELS", 0),
}
#: Positive finite numbers; all but the rate are seconds.
_NUMBERS = {
    "stale_after_s": "QE_BRIDGE_STALE_S",
    "reload_s": "QE_BRIDGE_RELOAD_S",
    "log_flush_s": "QE_BRIDGE_LOG_FLUSH_S",
    "handshake_timeout_s": "QE_BRIDGE_HANDSHAKE_TIMEOUT_S",
    "control_rate": "QE_BRIDGE_CONTROL_RATE",
    "clock_poll_s": "QE_BRIDGE_CLOCK_POLL_S",
    "max_skew_s": "QE_BRIDGE_MAX_SKEW_S",
    "close_grace_s": "QE_BRIDGE_CLOSE_GRACE_S",
    "endpoint_timeout_s": "QE_BRIDGE_ENDPOINT_TIMEOUT_S",
    "breaker_reset_s": "QE_BRIDGE_BREAKER_RESET_S",
    "online_forgetting": "QE_BRIDGE_ONLINE_FORGETTING",
    "online_max_shift": "QE_BRIDGE_ONLINE_MAX_SHIFT",
}


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
    max_connections: int = 256
    max_connections_per_address: int = 32
    handshake_timeout_s: float = 5.0
    max_subscriptions: int = 1000
    max_depth: int = 4
    control_rate: float = 20.0
    tls_cert: str | None = None
    tls_key: str | None = None
    clock: str = "auto"
    clock_poll_s: float = 1.0
    max_skew_s: float = 60.0
    close_grace_s: float = 300.0
    endpoint_timeout_s: float = 2.0
    endpoint_retries: int = 2
    endpoint_workers: int = 4
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0
    fallback: str = "none"
    online: str = "on"
    online_forgetting: float = 0.995
    online_max_shift: float = 0.1
    online_min_labels: int = 100

    def __post_init__(self) -> None:
        if not self.feed_url.startswith(("ws://", "wss://")):
            raise SettingsError(f"QE_FEED_URL={self.feed_url!r} must be a ws:// or wss:// URL")
        if not 0 <= self.port <= 65_535:
            raise SettingsError(f"QE_BRIDGE_PORT={self.port!r} is not a port number (0-65535)")
        for name, choices, variable in (
            ("model_source", MODEL_SOURCES, "QE_BRIDGE_MODEL"),
            ("vol_policy", VOL_POLICIES, "QE_BRIDGE_VOL_POLICY"),
            ("clock", CLOCK_MODES, "QE_BRIDGE_CLOCK"),
            ("fallback", FALLBACKS, "QE_BRIDGE_FALLBACK"),
            ("online", ONLINE_MODES, "QE_BRIDGE_ONLINE"),
        ):
            if getattr(self, name) not in choices:
                raise SettingsError(f"{variable}={getattr(self, name)!r} must be one of {', '.join(choices)}")
        if self.model_source == "sagemaker" and not self.sagemaker_endpoint:
            raise SettingsError("QE_BRIDGE_MODEL=sagemaker needs QE_SAGEMAKER_ENDPOINT, the endpoint to invoke")
        if self.buffer_policy is not None and self.buffer_policy not in OVERLOAD_POLICIES:
            raise SettingsError(
                f"QE_BRIDGE_BUFFER_POLICY={self.buffer_policy!r} must be one of {', '.join(OVERLOAD_POLICIES)}"
            )
        for name, (variable, least) in _WHOLE.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise SettingsError(f"{variable}={value!r} is not a whole number")
            if name != "port" and value < least:
                raise SettingsError(f"{variable}={value!r} must be {'> 0' if least == 1 else f'>= {least}'}")
        for name, variable in _NUMBERS.items():
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise SettingsError(f"{variable}={value!r} must be a finite number > 0")
        if not 0.5 <= self.online_forgetting <= 1:
            raise SettingsError(f"QE_BRIDGE_ONLINE_FORGETTING={self.online_forgetting!r} must be between 0.5 and 1")
        if self.online_max_shift > 0.5:
            raise SettingsError(f"QE_BRIDGE_ONLINE_MAX_SHIFT={self.online_max_shift!r} must be <= 0.5")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("QE_BRIDGE_TLS_CERT and QE_BRIDGE_TLS_KEY go together: set both (TLS) or neither")
        for path, variable in ((self.tls_cert, "QE_BRIDGE_TLS_CERT"), (self.tls_key, "QE_BRIDGE_TLS_KEY")):
            if path is not None and not Path(path).is_file():
                raise SettingsError(f"{variable}={path!r} is not a readable file")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The publisher's TLS context from ``QE_BRIDGE_TLS_CERT`` / ``QE_BRIDGE_TLS_KEY``; None without them."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (ssl.SSLError, OSError) as exc:
            raise SettingsError(
                f"QE_BRIDGE_TLS_CERT={self.tls_cert!r} / QE_BRIDGE_TLS_KEY={self.tls_key!r}: "
                f"not a certificate and its key ({exc})"
            ) from None
        return context

    def check_market_time(self, group: MarketTime) -> str:
        """The buffer policy for the group's bars; a bar size or calendar named here must be the group's."""
        try:
            named = MarketTime(self.calendar or group.calendar, self.bar_size or group.bar_size)
        except CalendarError as exc:
            raise SettingsError(f"QE_BRIDGE_BAR_SIZE / QE_BRIDGE_CALENDAR: {exc}") from None
        if named != group:
            raise SettingsError(
                f"the bridge is set for {named.describe()} but its feature group holds "
                f"{group.describe()}; unset QE_BRIDGE_BAR_SIZE / QE_BRIDGE_CALENDAR or serve "
                "another group (QE_FEATURE_GROUP)"
            )
        policy = self.buffer_policy or ("coalesce" if group.size.is_daily else "drop_oldest")
        if policy == "coalesce" and not group.size.is_daily:
            raise SettingsError(
                f"QE_BRIDGE_BUFFER_POLICY=coalesce is exact for daily bars only, not "
                f"{group.describe()}: use drop_oldest"
            )
        return policy

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BridgeSettings:
        """Read the settings from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        whole = {name: variable for name, (variable, _) in _WHOLE.items()}
        values: dict[str, object] = {**env_overrides(env, _TEXT), **env_overrides(env, whole, tuple(whole))}
        for name, variable in _NUMBERS.items():
            raw = env.get(variable)
            if raw:
                try:
                    values[name] = float(raw)
                except ValueError:
                    unit = {"control_rate": "per second", "online_forgetting": "", "online_max_shift": ""}.get(
                        name, "of seconds"
                    )
                    raise SettingsError(f"{variable}={raw!r} is not a number{' ' + unit if unit else ''}") from None
        for name in ("model_source", "clock", "fallback", "online"):
            if name in values:
                values[name] = str(values[name]).lower()
        return cls(tokens=_names(env.get("QE_BRIDGE_TOKENS")), tickers=_names(env.get("QE_BRIDGE_TICKERS")), **values)  # type: ignore[arg-type]
