"""The "Faust per-event tax" reference: how a first Faust sessionizer would look.

    NAIVE_BROKER_URL=kafka://127.0.0.1:9092 python bench/naive_faust.py worker -l warning

One agent over the raw-events topic: every record is parsed with orjson, then
*each event* is sent on its own with ``await topic.send()`` and bumps a
per-device counter in a Faust table (a changelog write per event). Nothing is
batched: the per-event tax the worker's batching avoids, kept as a lower
reference. ``bench/bench_stream.py --naive`` runs it as a subprocess worker on
a prefix of the workload.

Configured by environment (all optional):
``NAIVE_BROKER_URL``, ``NAIVE_APP_ID``, ``NAIVE_TOPIC_IN``, ``NAIVE_TOPIC_OUT``,
``NAIVE_PARTITIONS``, ``NAIVE_WEB_PORT``, ``NAIVE_DATA_DIR``.
"""

from __future__ import annotations

import os
from typing import Any

import faust
import orjson


def _env(name: str, default: str) -> str:
    return os.environ.get(f"NAIVE_{name}") or default


def _tuning() -> dict[str, Any]:
    # The same broker tuning as the real worker, when the project ships one: fair comparison.
    try:
        from sessionizer.stream.compat import FAUST_TUNING
    except ImportError:
        return {}
    return dict(FAUST_TUNING)


PARTITIONS = int(_env("PARTITIONS", "8"))

app = faust.App(
    _env("APP_ID", "naive-faust"),
    broker=_env("BROKER_URL", "kafka://127.0.0.1:9092"),
    store="memory://",
    datadir=_env("DATA_DIR", ".data/naive-faust"),
    topic_partitions=PARTITIONS,
    web_port=int(_env("WEB_PORT", "6067")),
    web_bind="127.0.0.1",
    web_host="127.0.0.1",
    consumer_auto_offset_reset="earliest",
    autodiscover=False,
    **_tuning(),
)

RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
source = app.topic(_env("TOPIC_IN", "naive-raw-events"), partitions=PARTITIONS, **RAW)
out = app.topic(_env("TOPIC_OUT", "naive-events"), partitions=PARTITIONS, **RAW)
# Keyed by device like the source, so each write lands in the source partition's changelog.
counts = app.Table("event-counts", default=int, partitions=PARTITIONS, key_type=str)


@app.agent(source)
async def naive(stream: Any) -> None:
    async for key, value in stream.items():
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if type(obj) is not dict:
            continue
        events = obj.get("events")
        if type(events) is not list:
            events = [obj] if "event_type" in obj else []
        device = key.decode("utf-8", "replace") if key else ""
        for event in events:
            await out.send(key=key, value=orjson.dumps(event))
            counts[device] += 1


if __name__ == "__main__":
    app.main()
