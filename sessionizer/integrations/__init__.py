"""Translations of the §7 outputs into each destination's terms (docs/integrations.md).

Work in progress: ``amplitude``, ``ga4``, ``mixpanel``, ``segment``, ``snowplow``
(forwarded events only; no session start/end records yet).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sessionizer import codec
from sessionizer.integrations import amplitude, ga4, mixpanel, segment, snowplow

Translation = Callable[
    [Iterable[dict[str, Any]]], tuple[list[dict[str, Any]], list[dict[str, Any]]]
]

REGISTRY: dict[str, Translation] = {
    "amplitude": amplitude.translate_events,
    "ga4": ga4.translate_events,
    "mixpanel": mixpanel.translate_events,
    "segment": segment.translate_events,
    "snowplow": snowplow.translate_events,
}


def parse_names(text: str) -> list[str]:
    """``"amplitude,ga4"`` -> ``["amplitude", "ga4"]``; unknown names raise ValueError."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown integration(s) {unknown}; known: {sorted(REGISTRY)}")
    return names


def write_files(out_dir: str | Path, names: Iterable[str]) -> dict[str, int]:
    """Reads DIR/sessionized-events.jsonl and writes DIR/integrations/<name>.jsonl
    (and <name>.dead-letters.jsonl). Returns the payload count per name."""
    d = Path(out_dir)
    records = [
        codec.loads(line)
        for line in (d / "sessionized-events.jsonl").read_bytes().splitlines()
        if line
    ]
    (d / "integrations").mkdir(exist_ok=True)
    counts: dict[str, int] = {}
    for name in names:
        out, dead = REGISTRY[name](records)
        (d / "integrations" / f"{name}.jsonl").write_bytes(b"".join(map(codec.dumps_line, out)))
        (d / "integrations" / f"{name}.dead-letters.jsonl").write_bytes(
            b"".join(map(codec.dumps_line, dead))
        )
        counts[name] = len(out)
    return counts
