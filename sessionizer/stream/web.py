"""The worker's HTTP views on Faust's web server: /health, /metrics, /sessions.

``/sessions/{app}/{device}`` is answered by the worker that owns the device's
partition. Raw records are keyed by device, so that partition is the default
(murmur2) partitioner's choice for the device bytes, and the engine partition
``p`` is co-partitioned with partition ``p`` of the ``state`` table's
changelog: Faust's table metadata (``app.router.table_metadata``) says which
worker's web server has it. A request is forwarded at most once (``?routed=1``),
so two workers that briefly disagree about the assignment cannot bounce it.

``/sessions`` shows user data: ``security.web_auth`` decides who may read it
(a bearer ``web_token``, or a loopback-only server without one), and forwarded
requests carry the token. ``/health`` and ``/metrics`` are open (docs/security.md).

What is read of the worker is the :class:`WebView` protocol (the worker's
``Pipeline`` is one), so this module does not depend on the worker.
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from faust.web import Request, Response, View
from prometheus_client.exposition import choose_encoder
from yarl import URL

from .. import procs
from ..core.config import ConfigError
from ..core.engine import controlled
from ..core.state import OPEN, KeyState, Session
from ..kafka.security import bearer_headers, redact_logs, web_auth
from ..run.encode import partition_for
from ..settings import Settings
from .metrics import Metrics, WorkerView, partition_stats, ready

if TYPE_CHECKING:
    from .compat import FaustRuntime

STATUS = ("open", "expired", "closed")  # Session.status


class WebView(WorkerView, Protocol):
    """What the views read of a worker, beyond what its metrics read."""

    @property
    def settings(self) -> Settings: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def control(self) -> Mapping[str, bool]:
        """The R19 console opt-out entries read so far."""

    def problems(self, lag: Mapping[int, int | None]) -> list[str]:
        """Why the worker is not healthy; empty when it is."""


def claim_web_port(settings: Settings) -> Settings:
    """``settings`` with a web port this worker can listen on; ``web_port`` 0 picks one.

    A port already in use (a second worker on the host) is a configuration error
    naming ``web_port``, found before Faust's web server fails on it with a traceback.
    """
    try:
        port = procs.bindable_port(settings.web_host, settings.web_port)
    except OSError as err:  # a privileged port, or an address this host does not have
        key = "web_port" if err.errno == errno.EACCES else "web_host"
        raise ConfigError(
            settings.label(key),
            f"cannot listen on {settings.web_host}:{settings.web_port}: {err.strerror or err}",
        ) from None
    if port is None:
        raise ConfigError(
            settings.label("web_port"),
            f"{settings.web_host}:{settings.web_port} is already in use (another worker "
            "on this host?): give each worker its own port, or 0 for any free one",
        )
    return settings if port == settings.web_port else dataclasses.replace(settings, web_port=port)


def register(runtime: FaustRuntime, pipe: WebView) -> None:
    """Adds the views to the worker's web server (Faust's)."""
    app = runtime.app
    topic = runtime.input_topic
    pipe.metrics.watch(pipe, topic)

    @app.page("/health")
    async def health(self: View, request: Request) -> Response:
        stats = partition_stats(pipe, topic)
        problems = pipe.problems({s.partition: s.lag for s in stats})
        ok = ready(pipe) and not problems
        body = {
            "ready": ok,
            "problems": problems,
            "partitions": [s.partition for s in stats],
            "lag": sum(s.lag or 0 for s in stats),
            "rebalancing": runtime.rebalancing,
            "control_ready": pipe.control_reader.ready.is_set(),
            "url": runtime.url,
            # R26: keys whose clock ran ahead of their partition (the latest one each).
            "time_outliers": [
                {
                    "partition": s.partition,
                    "events_ahead": s.events_ahead,
                    "key": s.ahead_key,
                    "ahead_ms": s.ahead_ms,
                }
                for s in stats
                if s.events_ahead
            ],
        }
        return self.json(body, status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics(self: View, request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(pipe.metrics.registry)
        return self.bytes(body, headers={"Content-Type": content_type})

    token = pipe.settings.web_token
    if token is not None:
        redact_logs(token.reveal())

    @app.page("/sessions/{app_name}/{device}")
    async def sessions(self: View, request: Request, app_name: str, device: str) -> Response:
        settings = pipe.settings
        denied = web_auth(
            settings.web_token, settings.web_host, request.headers.get("Authorization")
        )
        if denied is not None:
            return self.error(401, denied.reason, headers={"WWW-Authenticate": denied.challenge})
        return await _session(self, request, pipe, app_name, device)


def device_partition(device: bytes, partitions: int) -> int:
    """The partition the default partitioner gives a record keyed by ``device``."""
    return partition_for(device, None, partitions)


async def _session(view: View, request: Request, pipe: WebView, app: str, device: str) -> Response:
    skey = f"{app}/{device}"
    if controlled(pipe.control, app, device):
        return view.json({"opted_out": True})  # R18: nothing else of the key, anywhere
    p = device_partition(device.encode(), pipe.settings.partitions)
    found = _local(pipe, skey, p)
    rt = pipe.runtime
    if found is None:
        me = rt.url
        owner = rt.owner_url(p)
        if owner is not None and owner != me and "routed" not in request.query:
            return await _forward(view, request, pipe, owner)
        if owner == me:
            found = _from_table(pipe, skey, p)
        elif owner is None and not ready(pipe):
            return view.error(503, "not ready: partition assignment unknown", partition=p)
    if found is None:
        return view.error(404, "unknown session key", key=skey)
    st, partition, watermark, source = found
    return view.json(key_view(st, partition, watermark, source, rt.url))


def _local(pipe: WebView, skey: str, p: int) -> tuple[KeyState, int, int | None, str] | None:
    # The device's partition first; records not keyed by device may sit elsewhere.
    runners = dict(pipe.runners)
    order = [p, *(q for q in runners if q != p)]
    for q in order:
        r = runners.get(q)
        st = r.engine.key_state(skey) if r is not None else None
        if st is not None and r is not None:
            return st, q, r.engine.watermark, "engine"
    return None


def _from_table(pipe: WebView, skey: str, p: int) -> tuple[KeyState, int, int | None, str] | None:
    # Owned, but no batch since the assignment: the snapshot in the table.
    snap = pipe.store.snapshot(p, skey)
    if snap is None:
        return None
    return KeyState.restore(skey, snap), p, None, "table"


async def _forward(view: View, request: Request, pipe: WebView, owner: str) -> Response:
    target = URL(owner).with_path(request.rel_url.raw_path, encoded=True).with_query(routed="1")
    client: Any = pipe.runtime.http_client
    try:
        async with client.get(target, headers=bearer_headers(pipe.settings.web_token)) as resp:
            if resp.status == 401:
                # The owner refused our token: a configuration mismatch, not the caller's 401.
                return view.error(
                    502,
                    f"owner {owner} refused the forwarded request: do the workers share web_token?",
                )
            body = await resp.read()
            ctype = resp.headers.get("Content-Type", "application/json")
            return view.bytes(body, status=resp.status, headers={"Content-Type": ctype})
    except Exception as exc:
        return view.error(502, f"owner {owner} did not answer: {exc}")


def key_view(
    st: KeyState, partition: int, watermark: int | None, source: str, served_by: str
) -> dict[str, Any]:
    """The body of ``/sessions/{app}/{device}`` (schemas/sessions-lookup.schema.json).

    Each session is named for what it is: ``open_session`` is still open;
    ``expired_session`` was closed by the watermark (its session_end is out) and
    reopens if the key's next event comes before its deadline (R21);
    ``last_closed_session`` is final, kept so a late event can still correct it (R24).
    """
    if st.opted:
        return {"opted_out": True}  # R18: nothing else of the key
    current = st.open
    is_open = current is not None and current.status == OPEN
    return {
        "key": st.key,
        "app": st.app,
        "device": st.device,
        "opted_out": False,
        "session_count": st.counter,
        "open_session": _session_dict(current) if is_open else None,
        "expired_session": None if is_open else _session_dict(current),
        "last_closed_session": _session_dict(st.last),
        "partition": partition,
        "watermark_ms": watermark,
        "source": source,
        "served_by": served_by,
    }


def _session_dict(s: Session | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "session_uuid": s.uuid,
        "session_id": s.sid,
        "session_number": s.number,
        "status": STATUS[s.status],
        "start_unixtime_ms": s.start,
        "end_unixtime_ms": s.last_ts,  # while open: its latest event so far (R9)
        "deadline_unixtime_ms": s.deadline,
        "end_reason": s.reason,
        "event_count": s.events,
        "screen_view_count": s.screens,
        "foreground_duration_ms": s.foreground_ms(),
        "session_attributes": s.attributes(),
        "mpid": s.mpid,
        "mpids": list(s.mpids),
        "previous_session_uuid": s.prev_uuid,
        "revision": s.emitted - 1 if s.emitted else None,  # of the latest session_end record
    }
