PY ?= .venv/bin/python

.PHONY: bench-core

# Throughput of process-file against an orjson passthrough (target ratio 0.33).
bench-core:
	$(PY) bench/bench_core.py
