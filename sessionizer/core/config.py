"""Engine configuration: plain frozen values, validated once at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


class ConfigError(ValueError):
    """A bad setting; ``setting`` names it so start-up can say one clear line."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"invalid setting {setting}: {problem}")
        self.setting = setting
        self.problem = problem


@dataclass(frozen=True, slots=True)
class AppOverrides:
    """Per-app overrides (R2, R8); ``None`` means "use the global value"."""

    timeout_ms: int | None = None
    foreground_idle_timeout_ms: int | None = None
    resume_on_launch: bool | None = None


@dataclass(frozen=True, slots=True)
class AppRules:
    """The resolved session rules of one app."""

    timeout_ms: int
    idle_timeout_ms: int
    resume_on_launch: bool


@dataclass(frozen=True, slots=True)
class EngineConfig:
    timeout_ms: int = 30 * MINUTE_MS
    # None: 4 x timeout (R5), also per app when only the app's timeout is overridden.
    foreground_idle_timeout_ms: int | None = None
    resume_on_launch: bool = False
    apps: Mapping[str, AppOverrides] = field(default_factory=dict)
    grace_ms: int = 2 * MINUTE_MS
    state_ttl_ms: int = 30 * DAY_MS
    max_session_attributes: int = 100
    max_record_bytes: int = 1024 * 1024
    max_future_skew_ms: int = DAY_MS

    def __post_init__(self) -> None:
        positive = {
            "timeout_ms": self.timeout_ms,
            "state_ttl_ms": self.state_ttl_ms,
            "max_session_attributes": self.max_session_attributes,
            "max_record_bytes": self.max_record_bytes,
        }
        if self.foreground_idle_timeout_ms is not None:
            positive["foreground_idle_timeout_ms"] = self.foreground_idle_timeout_ms
        for name, value in positive.items():
            _check_int(name, value, minimum=1)
        _check_int("grace_ms", self.grace_ms, minimum=0)
        _check_int("max_future_skew_ms", self.max_future_skew_ms, minimum=0)
        for app, o in self.apps.items():
            if o.timeout_ms is not None:
                _check_int(f"apps.{app}.timeout_ms", o.timeout_ms, minimum=1)
            if o.foreground_idle_timeout_ms is not None:
                _check_int(
                    f"apps.{app}.foreground_idle_timeout_ms",
                    o.foreground_idle_timeout_ms,
                    minimum=1,
                )

    def rules_for(self, app: str) -> AppRules:
        o = self.apps.get(app)
        timeout = self.timeout_ms
        idle = self.foreground_idle_timeout_ms
        resume = self.resume_on_launch
        if o is not None:
            if o.timeout_ms is not None:
                timeout = o.timeout_ms
                # An app that only shortens its timeout keeps the 4x ratio.
                if o.foreground_idle_timeout_ms is None:
                    idle = None
            if o.foreground_idle_timeout_ms is not None:
                idle = o.foreground_idle_timeout_ms
            if o.resume_on_launch is not None:
                resume = o.resume_on_launch
        return AppRules(timeout, idle if idle is not None else 4 * timeout, resume)


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(name, f"must be >= {minimum}, got {value}")
