PY ?= .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: install test lint bench-core

# A fresh clone needs nothing but python3: the first target run builds the venv.
# Installed editable and pure: `make native` below is the development build, not setup.py.
$(VENV_STAMP): pyproject.toml setup.py
	python3 -m venv .venv
	SESSIONIZER_PURE_PYTHON=1 .venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(VENV_STAMP)

# The engine and its file driver compiled with mypyc (sessionizer/_native.py), rebuilt
# when a source changes; without a C compiler the sources run (same bytes, 1.3-1.6x slower).
NATIVE_STAMP := sessionizer/_native.json
NATIVE_SOURCES := sessionizer/_native.py $(wildcard sessionizer/core/*.py) \
	sessionizer/run/encode.py sessionizer/run/task.py sessionizer/run/files.py
$(NATIVE_STAMP): $(VENV_STAMP) $(NATIVE_SOURCES)
	$(PY) -c 'from sessionizer._native import build; build()' \
		|| echo "make native: not compiled (needs a C compiler); the Python sources run"

.PHONY: native clean-native
native: $(NATIVE_STAMP)

clean-native:
	$(PY) -c 'from sessionizer._native import clean; clean()'
	rm -rf build/mypyc

install: $(VENV_STAMP) $(NATIVE_STAMP)
READY := $(VENV_STAMP) $(NATIVE_STAMP)

# The engine's tests once more on its Python sources (the suite above runs the build).
PURE_TESTS := tests/test_golden.py tests/test_rules.py tests/test_properties.py \
	tests/test_fuzz.py tests/test_driver.py tests/test_native.py

# The test command of the README and of CI: lint, types, then every test.
test: $(READY) lint
	$(PY) -m pytest -q
	SESSIONIZER_PURE_PYTHON=1 $(PY) -m pytest -q $(PURE_TESTS)
	$(MAKE) --no-print-directory chaos-ci

lint: $(VENV_STAMP)
	.venv/bin/ruff check sessionizer tests bench
	.venv/bin/ruff format --check sessionizer tests bench
	.venv/bin/mypy


# Throughput of process-file against an orjson passthrough (target ratio 0.4), ~3 events
# per record; CORE_ARGS="--events-per-record 8" (also --reps 5, --events N).
CORE_ARGS ?=
bench-core: $(READY)
	$(PY) bench/bench_core.py $(CORE_ARGS)

# The worker against a raw aiokafka passthrough, same run (target ratio 0.33), on the embedded
# broker; STREAM_ARGS="--broker kafka" on one Apache Kafka node, "--broker both" side by side.
# STREAM_ARGS="--workers 2" (also --events-per-record 8, --reps 3, --probe, --py-spy FILE).
STREAM_ARGS ?=
.PHONY: bench-stream bench-stream-eos
bench-stream: $(READY)
	$(PY) bench/bench_stream.py $(STREAM_ARGS)

# exactly_once against at_least_once on the same Kafka, in one run (target: 0.8).
bench-stream-eos: $(READY)
	$(PY) bench/bench_stream.py --broker kafka --exactly-once $(STREAM_ARGS)

# Produce -> read_committed latency of one worker, at_least_once against exactly_once.
.PHONY: bench-latency
bench-latency: $(READY)
	$(PY) bench/bench_latency.py $(LATENCY_ARGS)

# Worker RSS per device and restart-to-ready, store=memory vs rocksdb, 1M devices (~45 min here).
STATE_ARGS ?=
.PHONY: bench-state
bench-state: $(READY)
	$(PY) bench/bench_state.py $(STATE_ARGS)

# Failover: two workers, one SIGKILLed; time until the survivor processes its partitions,
# standby_replicas 0 against 1, 200k devices. FAILOVER_ARGS="--devices 20000 --store rocksdb".
FAILOVER_ARGS ?=
.PHONY: bench-failover
bench-failover: $(READY)
	$(PY) bench/bench_failover.py $(FAILOVER_ARGS)

# Wrong clocks (R26, R27): emission delay, revisions and changed sessions, clean and with
# outlier devices (1 % ahead 1-24 h, a "now" record, one 30 days behind). TIME_ARGS="--seed 2".
TIME_ARGS ?=
.PHONY: bench-time
bench-time: $(READY)
	$(PY) bench/bench_time.py $(TIME_ARGS)

# Fuzz: mutated realistic records through process-file's engine and encoder;
# exits non-zero on any exception. FUZZ_ARGS="--records 100000 --seed 7" to vary.
FUZZ_ARGS ?= --records 1000000
.PHONY: fuzz
fuzz: $(READY)
	$(PY) bench/fuzz.py $(FUZZ_ARGS)

# Chaos: workers SIGKILLed/SIGTERMed and restarted under steady traffic on a fresh Apache
# Kafka per seed; the live output must equal process-file's. CHAOS_ARGS="--seed 7 --seeds 1
# --keep-logs" to vary (--embedded: on the development broker).
CHAOS_ARGS ?= --seeds 5
.PHONY: chaos chaos-brokers chaos-eos chaos-ci
chaos: $(READY)
	$(PY) bench/chaos.py $(CHAOS_ARGS)

# The same on three Kafka nodes (replication 3, min.insync.replicas 2) whose brokers fail
# too: the busiest leader SIGKILLed, a broker SIGSTOPped past its session timeout, the active
# controller SIGKILLed, each restarted.
chaos-brokers: $(READY)
	$(PY) bench/chaos.py --kafka-nodes 3 --broker-faults $(CHAOS_ARGS)

# The broker-fault chaos with processing_guarantee=exactly_once: any duplicate fails a seed.
chaos-eos: $(READY)
	$(PY) bench/chaos.py --kafka-nodes 3 --broker-faults --exactly-once $(CHAOS_ARGS)

# One short seed of each, run by `make test`: worker kills, broker faults, exactly once.
chaos-ci: $(READY)
	$(PY) bench/chaos.py --seeds 1 --events 20000 --duration 45
	$(PY) bench/chaos.py --seeds 1 --seed 2 --events 20000 --duration 60 --kafka-nodes 3 --broker-faults
	$(PY) bench/chaos.py --seeds 1 --seed 3 --events 20000 --duration 45 --exactly-once

# Apache Kafka from its Maven jars (sessionizer/tools/apache_kafka.py, deploy/kafka/pom.xml):
# `make kafka` runs one KRaft node on 127.0.0.1:9092 until Ctrl-C (KAFKA_ARGS="--nodes 3").
KAFKA_ARGS ?=
.PHONY: kafka kafka-jars
kafka-jars: $(VENV_STAMP)
	$(PY) -c 'from sessionizer.tools.apache_kafka import lib_dir; lib_dir()'

kafka: $(VENV_STAMP) kafka-jars
	$(PY) -m sessionizer.tools.apache_kafka $(KAFKA_ARGS)

# The demo: embedded broker, worker, live sample traffic and a live view of the sessions.
.PHONY: run
run: $(READY)
	$(PY) -m sessionizer demo

# Validate docker-compose.yml without starting anything (no Docker engine needed):
# `docker compose` (v2 plugin), else the standalone `docker-compose`, else skip.
.PHONY: compose-config
compose-config:
	@if docker compose version >/dev/null 2>&1; then \
		docker compose config -q && echo "docker-compose.yml: valid (docker compose)"; \
	elif command -v docker-compose >/dev/null 2>&1; then \
		docker-compose config -q && echo "docker-compose.yml: valid (docker-compose)"; \
	else \
		echo "compose-config: skipped, no docker compose client here"; \
	fi

# The wheel as users build it (`pip wheel .`, compiled by setup.py's hook), installed into a
# clean venv outside the tree: `sessionizer --version` says compiled, the golden bytes hold.
.PHONY: wheel-check
wheel-check:
	.ci/wheel-check
