"""The command line of SPEC §9. Thin: parse, load settings, call the module that works."""

from __future__ import annotations

import sys
from typing import Any

import click

from .core.config import ConfigError

# Exit 2 on usage or configuration errors (§9); click already uses 2 for usage.
EXIT_CONFIG = 2


def _settings(config: str | None, **overrides: Any) -> Any:
    from .settings import load_settings

    try:
        return load_settings(config, **overrides)
    except ConfigError as err:
        click.echo(f"sessionizer: {err}", err=True)
        sys.exit(EXIT_CONFIG)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sessionizer")
def main() -> None:
    """Turn raw mParticle app events on Kafka into user sessions."""


@main.command("process-file")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--config", "config", default=None, help="TOML settings file.")
@click.option("--keep-open", is_flag=True, help="Leave sessions open at end of input.")
def process_file(
    inputs: tuple[str, ...], out_dir: str, config: str | None, keep_open: bool
) -> None:
    """Sessionize JSONL files (or - for stdin) into DIR/<topic>.jsonl."""
    import os

    from . import codec
    from .offline import process_files

    for path in inputs:
        if path != "-" and not os.path.isfile(path):
            raise click.UsageError(f"input file not found: {path}")
    settings = _settings(config)
    _engine, counts = process_files(list(inputs), out_dir, settings.engine, keep_open=keep_open)
    sys.stdout.buffer.write(codec.dumps_line(counts.as_dict()))
    sys.stdout.flush()
