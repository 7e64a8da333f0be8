"""The command line (§9 of docs/rules.md). Thin: parse, load settings, call the module."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from . import HOT_PATH
from .core.config import ConfigError
from .settings import Settings

# Exit 2 on usage or configuration errors (§9); click already uses 2 for usage.
EXIT_CONFIG = 2

_R = TypeVar("_R")


# Options most commands take, declared once.
_config_option = click.option("--config", "config", default=None, help="TOML settings file.")
_broker_option = click.option(
    "--broker", "broker_url", default=None, help="Kafka URL, e.g. kafka://host:9092."
)


def _config_exit(problem: object, command: str | None = None) -> NoReturn:
    """A usage or configuration error: one line on stderr, exit 2."""
    prefix = "sessionizer" if command is None else f"sessionizer {command}"
    click.echo(f"{prefix}: {problem}", err=True)
    sys.exit(EXIT_CONFIG)


def _settings(config: str | None, **overrides: Any) -> Any:
    from .settings import load_settings

    try:
        return load_settings(config, **overrides)
    except ConfigError as err:
        _config_exit(err)


def _config_safe(run: Callable[[], _R]) -> _R:
    """``run()``; a configuration error found late (a TLS file, say): one line, exit 2."""
    try:
        return run()
    except ConfigError as err:
        _config_exit(err)


def _worker_unsupported(settings: Settings) -> str | None:
    """Settings the model accepts but this install cannot honour: one line, at start-up."""
    from .stream.compat import check_versions

    versions = check_versions()
    if versions:
        return versions
    if settings.store == "rocksdb":
        try:
            import rocksdict  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
        except ImportError:
            return (
                f"invalid setting {settings.label('store')}: rocksdb needs the rocksdict "
                "package (pip install rocksdict); or use memory"
            )
        from .stream.datadir import hold

        try:
            owner = hold(settings.data_dir)
        except OSError as err:
            return f"invalid setting {settings.label('data_dir')}: {err}"
        if owner is not None:
            return (
                f"invalid setting {settings.label('data_dir')}: {settings.data_dir} is in use "
                f"by another worker (pid {owner or '?'}) with store = rocksdb; give each "
                "worker its own data_dir"
            )
    return None


def _web_auth_note(settings: Settings) -> str | None:
    """A start-up line when /sessions will refuse every request (docs/security.md)."""
    from .kafka.security import is_loopback

    if settings.web_token is None and not is_loopback(settings.web_host):
        return (
            f"web_host {settings.web_host} is not loopback and no web_token is set: "
            "/sessions answers 401 to every request (set SESSIONIZER_WEB_TOKEN)"
        )
    return None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
# The hot path: compiled (mypyc) or the sources (sessionizer/_native.py).
@click.version_option(package_name="sessionizer", message=f"%(prog)s %(version)s ({HOT_PATH})")
def main() -> None:
    """Turn raw mParticle app events on Kafka into user sessions."""


@main.command("process-file")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@_config_option
@click.option("--keep-open", is_flag=True, help="Leave sessions open at end of input.")
@click.option(
    "--integrations",
    "integrations",
    default=None,
    help="Comma-separated: also write DIR/integrations/<name>.jsonl (docs/integrations.md).",
)
def process_file(
    inputs: tuple[str, ...],
    out_dir: str,
    config: str | None,
    keep_open: bool,
    integrations: str | None = None,
) -> None:
    """Sessionize JSONL files (or - for stdin) into DIR/<topic>.jsonl."""
    import os

    from . import codec
    from .run.files import process_files

    for path in inputs:
        if path != "-" and not os.path.isfile(path):
            raise click.UsageError(f"input file not found: {path}")
    names: list[str] = []
    if integrations:
        from .integrations import parse_names

        try:
            names = parse_names(integrations)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--integrations") from None
    settings = _settings(config, connects=False)  # never connects: TLS files unchecked
    _engine, counts = process_files(list(inputs), out_dir, settings.engine, keep_open=keep_open)
    if names:
        from .integrations import Options, write_files

        write_files(out_dir, names, Options.of(settings))
    sys.stdout.buffer.write(codec.dumps_line(counts.as_dict()))
    sys.stdout.flush()


@main.command("broker")
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address.")
@click.option("--port", type=int, default=9092, show_default=True)
@click.option("--binary", default=None, help="Tansu binary (default: SESSIONIZER_BROKER_BIN).")
def broker(host: str, port: int, binary: str | None) -> None:
    """Run the embedded development broker (memory only) until Ctrl-C."""
    from .tools.broker import run_broker

    sys.exit(run_broker(host, port, binary))


@main.command("worker")
@_broker_option
@click.option(
    "--web-port", type=int, default=None, help="HTTP port of /health, /metrics and /sessions."
)
@click.option("--data-dir", default=None, help="Where table state lives (RocksDB store).")
@_config_option
@click.option("--app-id", default=None, help="Worker group id (default: sessionizer).")
@click.option("--loglevel", default="warning", show_default=True)
def worker(
    broker_url: str | None,
    web_port: int | None,
    data_dir: str | None,
    config: str | None,
    app_id: str | None,
    loglevel: str,
) -> None:
    """Run the streaming worker (Faust) against a Kafka broker."""
    import asyncio

    from .kafka.clients import prepare_broker
    from .stream.worker import build_app

    settings = _settings(
        config, broker_url=broker_url, web_port=web_port, data_dir=data_dir, app_id=app_id
    )
    problem = _worker_unsupported(settings)
    if problem:
        _config_exit(problem)
    from .stream.web import claim_web_port

    settings = _config_safe(lambda: claim_web_port(settings))
    try:
        broker, created = asyncio.run(prepare_broker(settings))
    except ConfigError as err:
        _config_exit(err)
    except Exception as exc:
        click.echo(f"sessionizer: cannot reach the broker {settings.broker_url}: {exc}", err=True)
        sys.exit(1)
    if created:
        click.echo(f"created topics: {', '.join(created)}", err=True)
    note = _web_auth_note(settings)
    if note:
        click.echo(f"sessionizer: {note}", err=True)
    from .stream.compat import run_worker

    app = _config_safe(lambda: build_app(settings, broker=broker))
    # The worker prints "sessionizer worker ready: partitions [...] of TOPIC; web URL"
    # on stderr whenever its assignment changes (docs/operations.md#start-up); not
    # redirected into Faust's log, so it stays one plain line at any log level.
    run_worker(app, loglevel)


@main.command("produce")
@click.argument("file", required=False)
@click.option(
    "--generate",
    "n_events",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Produce the synthetic workload with N events instead of a file.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="At most R events per second (default: as fast as possible; --live: 50).",
)
@click.option(
    "--live",
    is_flag=True,
    help="Endless synthetic traffic stamped with the wall clock as it happens (compose).",
)
@_broker_option
@_config_option
@click.option(
    "--devices", type=click.IntRange(min=1), default=None, help="--generate, --live: devices."
)
@click.option("--seed", type=int, default=1, show_default=True, help="--generate, --live: seed.")
def produce(
    file: str | None,
    n_events: int | None,
    rate: float | None,
    live: bool,
    broker_url: str | None,
    config: str | None,
    devices: int | None,
    seed: int,
) -> None:
    """Produce JSONL records (FILE, - for stdin, .gz accepted) into the raw-events topic."""
    import os

    from .tools.produce import run

    if (file is not None) + (n_events is not None) + live != 1:
        raise click.UsageError("give one of FILE, --generate N or --live")
    if file is not None and file != "-" and not os.path.isfile(file):
        raise click.UsageError(f"input file not found: {file}")
    settings = _settings(config, broker_url=broker_url)
    sys.exit(
        _config_safe(
            lambda: run(settings, file, n_events, rate=rate, devices=devices, seed=seed, live=live)
        )
    )


@main.command("demo")
@click.option(
    "--broker", "broker_url", default=None, help="Use this Kafka instead of the embedded broker."
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Embedded broker port (default 9092, or a free one when 9092 is busy; 0: any free).",
)
@_config_option
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Stop by itself after this long (default: until Ctrl-C).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=50.0,
    show_default=True,
    help="Live traffic, in events per second (on average).",
)
@click.option("--no-view", is_flag=True, help="Print a summary line every few seconds instead.")
@click.option("--seed", type=int, default=None, help="Random seed of the live traffic.")
def demo(
    broker_url: str | None,
    port: int | None,
    config: str | None,
    duration: float | None,
    rate: float,
    no_view: bool,
    seed: int | None,
) -> None:
    """Broker, worker and live traffic in one command, with a live view of the sessions."""
    from .tools.demo import run

    if broker_url is not None and port is not None:
        raise click.UsageError("--port is for the embedded broker; drop it with --broker")
    try:
        code = run(
            broker_url,
            port=port,
            config=config,
            duration=duration,
            rate=rate,
            view=False if no_view else None,
            seed=seed,
        )
    except ConfigError as err:
        _config_exit(err)
    sys.exit(code)


@main.command("tail")
@click.argument("kind", type=click.Choice(["sessions", "events", "dead-letters"]))
@click.option("--json", "as_json", is_flag=True, help="Print each raw JSON value, one a line.")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest record, not now.")
@_broker_option
@_config_option
@click.option(
    "--max",
    "max_records",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Stop after N records.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Stop after this long (default: until Ctrl-C).",
)
def tail(
    kind: str,
    as_json: bool,
    from_beginning: bool,
    broker_url: str | None,
    config: str | None,
    max_records: int | None,
    timeout_s: float | None,
) -> None:
    """Follow an output topic: sessions, events (sessionized) or dead-letters."""
    from .tools.tail import TailOptions, run

    options = TailOptions(
        as_json=as_json,
        from_beginning=from_beginning,
        max_records=max_records,
        timeout_s=timeout_s,
    )
    settings = _settings(config, broker_url=broker_url)
    sys.exit(_config_safe(lambda: run(settings, kind, options)))


@main.command("replay")
@click.option("--from-beginning", is_flag=True, help="Replay every record of the raw topic.")
@click.option(
    "--since", "since", default=None, metavar="DURATION|TIME", help="From this record time."
)
@click.option(
    "--until", "until", default=None, metavar="DURATION|TIME", help="Up to (not incl.) then."
)
@click.option(
    "--output-prefix",
    "output_prefix",
    default=None,
    metavar="P",
    help="Write to P + each output topic name (default: backfill.).",
)
@click.option("--to-live-topics", is_flag=True, help="Write to the live output topics.")
@click.option("--keep-open", is_flag=True, help="Leave sessions open at the end.")
@_broker_option
@_config_option
def replay(
    from_beginning: bool,
    since: str | None,
    until: str | None,
    output_prefix: str | None,
    to_live_topics: bool,
    keep_open: bool,
    broker_url: str | None,
    config: str | None,
) -> None:
    """Backfill: the raw topic through the engine into backfill topics.

    TIME is a duration back from now (30m, 1h, 7d), ISO-8601 (2026-01-01T10:00:00Z;
    UTC when no zone is given) or epoch milliseconds, compared with the records'
    Kafka timestamps. Reads up to
    --until or to the end offsets seen at start; prints the counts as one JSON line.
    """
    import time

    from .run import replay as rp

    def usage(message: str) -> NoReturn:
        _config_exit(message, "replay")

    if from_beginning == (since is not None):
        usage("give exactly one of --from-beginning and --since TIME")
    if to_live_topics and output_prefix is not None:
        usage("--to-live-topics and --output-prefix exclude each other")
    times: dict[str, int | None] = {"--since": None, "--until": None}
    now_ms = time.time_ns() // 1_000_000
    for name, text in (("--since", since), ("--until", until)):
        if text is not None:
            try:
                times[name] = rp.parse_since_ms(text, now_ms)
            except ValueError as err:
                usage(f"{name}: {err}")
    since_ms, until_ms = times["--since"], times["--until"]
    if since_ms is not None and until_ms is not None and until_ms <= since_ms:
        usage("--until must be after --since")
    prefix = "" if to_live_topics else rp.DEFAULT_PREFIX if output_prefix is None else output_prefix
    settings = _settings(config, broker_url=broker_url)
    try:
        rp.check_prefix(settings, prefix)
    except ValueError as err:
        usage(f"--output-prefix: {err}")
    sys.exit(
        _config_safe(
            lambda: rp.run(
                settings,
                since_ms=since_ms,
                until_ms=until_ms,
                output_prefix=prefix,
                keep_open=keep_open,
            )
        )
    )


@main.command("forward")
@click.argument("name")
@_config_option
@_broker_option
@click.option("--endpoint", default=None, help="Destination URL (default: forward_endpoint).")
@click.option("--web-port", type=int, default=None, help="Port of /health and /metrics.")
def forward(
    name: str,
    config: str | None,
    broker_url: str | None,
    endpoint: str | None,
    web_port: int | None,
) -> None:
    """Deliver the topic integrations.NAME to the destination's HTTP API (docs/integrations.md)."""
    from .integrations.forward import run_cli

    sys.exit(
        run_cli(
            _settings,
            name,
            config=config,
            broker_url=broker_url,
            endpoint=endpoint,
            web_port=web_port,
        )
    )


@main.command("report")
@click.option(
    "--since",
    "since",
    default="1h",
    show_default=True,
    metavar="DURATION|TIME",
    help='Session records written since then: a duration back from now ("1h", "30m"), '
    "an ISO-8601 time or epoch milliseconds.",
)
@click.option("--from-beginning", is_flag=True, help="Every record of the sessions topic.")
@click.option(
    "--out", "out_path", default="sessionizer-report.html", show_default=True, metavar="FILE"
)
@_broker_option
@_config_option
def report(
    since: str, from_beginning: bool, out_path: str, broker_url: str | None, config: str | None
) -> None:
    """Sessions by end reason, durations and apps, from the sessions topic, as one HTML page."""
    import time

    from .run.replay import parse_since_ms
    from .tools import report as rep

    now_ms = time.time_ns() // 1_000_000
    since_ms: int | None = None
    if not from_beginning:
        try:
            since_ms = parse_since_ms(since, now_ms)
        except ValueError as err:
            _config_exit(f"--since: {err}", "report")
    settings = _settings(config, broker_url=broker_url)
    sys.exit(
        _config_safe(lambda: rep.run(settings, since_ms=since_ms, out_path=out_path, now_ms=now_ms))
    )
