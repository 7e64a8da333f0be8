"""sessionizer: raw app events on Kafka into user sessions (README.md)."""

from ._native import install_guard

# Before anything imports the engine: compiled when built and current, else the sources.
HOT_PATH = install_guard()
