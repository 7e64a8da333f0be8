"""The deployment files, checked without Docker: Dockerfile, compose stack, Prometheus, Grafana.

The YAML checks need PyYAML and skip without it; the dashboard and Dockerfile
checks need nothing. When a `docker compose` / `docker-compose` client or
`promtool` is on PATH, they validate the files too (no engine needed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "sessionizer.json"
DATASOURCE = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDER = GRAFANA / "provisioning" / "dashboards" / "sessionizer.yml"

# The worker's metrics (sessionizer/stream/metrics.py). The session duration
# histogram is the one the dashboard asks for; see docs/operations.md.
COUNTERS_AND_GAUGES = {
    "sessionizer_events_in_total",
    "sessionizer_events_forwarded_total",
    "sessionizer_events_control_total",
    "sessionizer_events_opted_out_total",
    "sessionizer_dead_letters_total",
    "sessionizer_sessions_started_total",
    "sessionizer_sessions_ended_total",
    "sessionizer_sessions_revised_total",
    "sessionizer_open_sessions",
    "sessionizer_watermark_ms",
    "sessionizer_consumer_lag",
}
# The forwarder's (sessionizer/integrations/forward.py), on the same dashboard.
FORWARDER = {
    "sessionizer_forward_sent_total",
    "sessionizer_forward_failed_total",
    "sessionizer_forward_retried_total",
}
COUNTERS_AND_GAUGES |= FORWARDER
HISTOGRAMS = {
    "sessionizer_batch_seconds",
    "sessionizer_session_duration_seconds",
    "sessionizer_forward_request_seconds",
}
METRICS = COUNTERS_AND_GAUGES | {
    h + suffix for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
}
# Labels each metric carries (besides Prometheus' job/instance).
LABELS = {
    "sessionizer_dead_letters_total": {"reason"},
    "sessionizer_sessions_ended_total": {"reason"},
    "sessionizer_open_sessions": {"partition"},
    "sessionizer_watermark_ms": {"partition"},
    "sessionizer_consumer_lag": {"partition"},
    "sessionizer_batch_seconds_bucket": {"le"},
    "sessionizer_session_duration_seconds_bucket": {"le"},
    "sessionizer_forward_sent_total": {"destination"},
    "sessionizer_forward_failed_total": {"destination", "reason"},
    "sessionizer_forward_retried_total": {"destination", "cause"},
    "sessionizer_forward_request_seconds_bucket": {"le", "destination"},
}
PROMQL_WORDS = {
    # aggregations, functions and keywords the dashboard may use
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev",
    "rate", "irate", "increase", "delta", "deriv", "histogram_quantile", "time",
    "clamp_min", "clamp_max", "abs", "vector", "scalar", "absent", "sort", "sort_desc",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
    "unless", "offset", "bool",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, keywords or labels)."""
    e = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', e)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", e)
    idents = set(re.findall(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", e))
    return idents - PROMQL_WORDS


def grouped_labels(expr: str) -> set[str]:
    out: set[str] = set()
    for m in re.finditer(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        out |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    return out


def _yaml(path: Path) -> Any:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    return yaml.safe_load(path.read_text())


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _targets() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(p, t) for p in _dashboard()["panels"] for t in p.get("targets", [])]


# --------------------------------------------------------------------------- dashboard


def test_metric_names_tokenizer() -> None:
    expr = 'sum by (reason, x) (rate(a_total{job="w", reason=~"b.*"}[$__rate_interval])) * 60'
    assert metric_names(expr) == {"a_total"}
    assert grouped_labels(expr) == {"reason", "x"}
    q = "histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m]))) / 1e3 - time()"
    assert metric_names(q) == {"h_bucket"}


def test_dashboard_json_parses_and_is_laid_out() -> None:
    dash = _dashboard()
    assert dash["uid"] == "sessionizer"
    panels = dash["panels"]
    assert panels
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        cell = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & cell, f"panel {p['title']!r} overlaps another"
        cells |= cell
        assert p["targets"], p["title"]
        assert [t["refId"] for t in p["targets"]] == [chr(65 + i) for i in range(len(p["targets"]))]


def test_dashboard_promql_only_uses_the_workers_metrics() -> None:
    for panel, target in _targets():
        expr = target["expr"]
        names = metric_names(expr)
        assert names, f"{panel['title']}: no metric in {expr!r}"
        assert names <= METRICS, f"{panel['title']}: unknown metric {names - METRICS}"
        # Grouping and legends only name labels the metrics carry.
        carried = set().union(*(LABELS.get(n, set()) for n in names))
        assert grouped_labels(expr) <= carried, f"{panel['title']}: {expr!r}"
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        assert legend <= grouped_labels(expr), f"{panel['title']}: legend {legend}"
        # Counters only through rate/increase.
        for counter in (n for n in names if n.endswith(("_total", "_bucket"))):
            assert re.search(rf"(rate|increase)\(\s*{counter}\b", expr), (panel["title"], expr)


def test_dashboard_has_the_panels_operators_need() -> None:
    exprs = {t["expr"] for _, t in _targets()}

    def some(pattern: str) -> bool:
        return any(re.search(pattern, e) for e in exprs)

    assert some(r"sessionizer_sessions_started_total")
    assert some(r"by \(reason\) \(rate\(sessionizer_sessions_ended_total")
    assert some(r"increase\(sessionizer_session_duration_seconds_bucket")
    assert some(r"by \(reason\) \(rate\(sessionizer_dead_letters_total")
    assert some(r"by \(partition\) \(sessionizer_consumer_lag\)")
    assert some(r"rate\(sessionizer_events_in_total")
    assert some(r"rate\(sessionizer_events_forwarded_total")
    # Issue 20: the forwarder's deliveries, failures and retries, per destination.
    for name in FORWARDER:
        assert some(rf"by \(destination[^)]*\) \(rate\({name}"), name
    assert some(r"by \(le, destination\) \(rate\(sessionizer_forward_request_seconds_bucket")
    heatmaps = [p for p in _dashboard()["panels"] if p["type"] == "heatmap"]
    assert heatmaps and all(t.get("format") == "heatmap" for p in heatmaps for t in p["targets"])


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """Each expression as a recording rule: promtool parses the PromQL."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for panel, target in _targets():
        expr = target["expr"].replace("$__rate_interval", "1m")
        lines += [
            f"      - record: panel_{panel['id']}_{target['refId']}",
            f"        expr: {json.dumps(expr)}",
        ]
    rules = tmp_path / "rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        ["promtool", "check", "rules", str(rules)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- Dockerfile


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_runs_the_console_script_as_non_root() -> None:
    ins = _instructions()
    # The image is the last stage: what runs is what it sets.
    last = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    get = lambda word: [rest for w, rest in ins[last:] if w == word]  # noqa: E731
    assert get("FROM") == ["python:3.11-slim"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["sessionizer"] == "sessionizer.cli:main"
    assert [json.loads(e) for e in get("ENTRYPOINT")] == [["sessionizer"]]
    assert [json.loads(c) for c in get("CMD")] == [["worker"]]
    assert get("EXPOSE") == ["6066"]
    users = get("USER")
    assert users and users[-1] not in ("root", "0")
    env = " ".join(get("ENV"))
    assert "SESSIONIZER_WEB_HOST=0.0.0.0" in env  # reachable through a published port
    # Issue 20 item 10: the image keeps RocksDB state on its volume (a restart reads
    # no changelog); the volume is the data directory.
    assert "SESSIONIZER_STORE=rocksdb" in env
    data_dir = re.search(r"SESSIONIZER_DATA_DIR=(\S+)", env)
    assert data_dir and [json.loads(v) for v in get("VOLUME")] == [[data_dir.group(1)]]
    # What the image copies is what .dockerignore lets through.
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    copied = [r.split()[:-1] for w, r in ins if w == "COPY" and not r.startswith("--from")]
    for src in (s for srcs in copied for s in srcs):
        assert src not in ignored and (ROOT / src).exists(), src
    assert "setup.py" in {s for srcs in copied for s in srcs}  # the compiling build hook


def test_dockerfile_ships_the_compiled_engine() -> None:
    """Issue 20 item 3: a builder stage with a C compiler builds the wheel (setup.py
    compiles the engine); the image installs that wheel, with no compiler of its own,
    and its build fails unless the installed package runs the compiled engine."""
    ins = _instructions()
    stages = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    assert len(stages) == 2, "a builder stage and the image"
    builder, image = ins[stages[0] : stages[1]], ins[stages[1] :]
    assert builder[0][1].endswith(" AS build")
    build_runs = " ".join(r for w, r in builder if w == "RUN")
    assert "gcc" in build_runs and "pip wheel" in build_runs
    image_runs = " ".join(r for w, r in image if w == "RUN")
    assert any(w == "COPY" and r.startswith("--from=build ") for w, r in image)
    assert "gcc" not in image_runs
    assert "pip install /wheels/" in image_runs
    assert "sessionizer --version | grep -q '(compiled)'" in image_runs


def test_dockerfile_run_example_sets_a_web_token() -> None:
    """Issue 20 item 8: the image binds 0.0.0.0, where /sessions needs a token
    (docs/security.md); the example publishes the port on the host's loopback."""
    text = re.sub(r"\\\n#?", " ", DOCKERFILE.read_text())
    runs = [line for line in text.splitlines() if "docker run" in line and " -p " in line]
    assert runs
    for line in runs:
        assert "SESSIONIZER_WEB_TOKEN=" in line, line
        assert "-p 127.0.0.1:6066:6066" in line, line


# --------------------------------------------------------------------------- compose stack


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port."""
    return {container: host for container, (_, host) in _bindings(service).items()}


def _bindings(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """container port -> (host address, "" for all interfaces; host port)."""
    out = {}
    for spec in service.get("ports", []):
        parts = str(spec).split(":")  # [address:][host port:]container port[/protocol]
        container = int(parts[-1].split("/")[0])
        host = int(parts[-2]) if len(parts) > 1 and parts[-2] else container
        out[container] = (parts[-3] if len(parts) > 2 else "", host)
    return out


def test_compose_kafka_is_a_single_kraft_node() -> None:
    services = _yaml(COMPOSE)["services"]
    assert set(services) >= {"kafka", "worker", "prometheus", "grafana"}
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = _env(kafka)
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    node = env["KAFKA_NODE_ID"]
    listeners = dict(
        (name, int(port))
        for name, port in re.findall(r"(\w+)://[^:,]*:(\d+)", env["KAFKA_LISTENERS"])
    )
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node}@kafka:{listeners[controller]}"
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols)
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])
    advertised = dict(re.findall(r"(\w+)://([^,]+)", env["KAFKA_ADVERTISED_LISTENERS"]))
    assert controller not in advertised
    # The worker reaches the broker by the listener advertised on the compose network.
    worker_hosts = urlparse(_env(services["worker"])["SESSIONIZER_BROKER_URL"]).netloc
    assert worker_hosts in advertised.values()
    name = next(n for n, a in advertised.items() if a == worker_hosts)
    assert int(worker_hosts.rpartition(":")[2]) == listeners[name]
    # The host listener is published on the port it advertises.
    for n, addr in advertised.items():
        if addr.startswith("localhost:"):
            assert _published(kafka)[listeners[n]] == int(addr.rpartition(":")[2])
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
    ):
        assert env[key] == "1"


def test_compose_worker_is_built_here_and_health_checked() -> None:
    services = _yaml(COMPOSE)["services"]
    worker = services["worker"]
    assert worker["build"] in (".", {"context": "."})
    env = _env(worker)
    port = int(env.get("SESSIONIZER_WEB_PORT", "6066"))
    assert env["SESSIONIZER_WEB_HOST"] == "0.0.0.0"
    assert port in _published(worker)
    check = " ".join(worker["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/health" in check
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name, service in services.items():
        if service.get("image", "").startswith("sessionizer:"):
            assert service.get("build") in (".", {"context": "."}), name


def test_compose_worker_sessions_need_a_token_of_your_own() -> None:
    worker = _yaml(COMPOSE)["services"]["worker"]
    env = _env(worker)
    # Required from the environment (or .env), never a default everyone knows.
    token = env["SESSIONIZER_WEB_TOKEN"]
    assert re.fullmatch(r"\$\{SESSIONIZER_WEB_TOKEN:\?[^}]*docs/security\.md\}", token), token
    # Published on the host's loopback only; Prometheus scrapes over the compose network.
    port = int(env.get("SESSIONIZER_WEB_PORT", "6066"))
    assert _bindings(worker)[port] == ("127.0.0.1", port)


def test_prometheus_scrapes_the_worker_service() -> None:
    services = _yaml(COMPOSE)["services"]
    port = int(_env(services["worker"]).get("SESSIONIZER_WEB_PORT", "6066"))
    config = _yaml(PROMETHEUS)
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    job = jobs["sessionizer"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"worker:{port}"]
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_compose_traffic_is_stamped_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20 item 4: the traffic service's events are stamped with the wall clock,
    so the lag panels show the pipeline's lag, not the data's age (it produced
    a workload stamped from 2026-01-01). Its records, taken without waiting for them."""
    import asyncio
    import itertools
    import time

    from sessionizer import cli, codec
    from sessionizer.tools import produce as produce_mod

    traffic = _yaml(COMPOSE)["services"]["traffic"]
    assert traffic["image"] == _yaml(COMPOSE)["services"]["worker"]["image"]
    command = traffic["command"]
    assert command[0] == "produce"
    ctx = cli.main.commands["produce"].make_context("produce", list(command[1:]))
    p = ctx.params
    source = produce_mod._source(
        p["file"], p["n_events"], p["devices"], p["seed"], live=p["live"], rate=p["rate"]
    )

    async def instant(_delay: float) -> None:
        return None

    async def first(n: int) -> list[bytes]:
        out = []
        async for value in source:
            out.append(value)
            if len(out) == n:
                break
        return out

    monkeypatch.setattr(asyncio, "sleep", instant)  # the records come when due: not wait
    if hasattr(source, "__aiter__"):
        values = asyncio.run(first(200))
    else:
        values = list(itertools.islice(source, 200))
    now_ms = time.time_ns() // 1_000_000
    stamps = []
    for v in values:
        try:
            rec = codec.loads(v)
        except codec.JSONDecodeError:
            continue  # an upload cut off mid-way
        ts = [e["data"]["timestamp_unixtime_ms"] for e in rec.get("events", [])]
        stamps += [t for t in ts if type(t) is int and 10**12 <= t < 10**13]  # not s, µs
    assert len(stamps) > 100
    # Within the hour around now (uploads of the visits in progress), not months back.
    assert all(abs(ts - now_ms) < 3_600_000 for ts in stamps), (min(stamps), now_ms)


def test_compose_runs_the_forwarder_and_prometheus_scrapes_it() -> None:
    services = _yaml(COMPOSE)["services"]
    fwd = services["forwarder"]
    assert fwd["image"] == services["worker"]["image"] and fwd["build"] == "."
    assert fwd["command"][0] == "forward"
    env = _env(fwd)
    port = int(env["SESSIONIZER_WEB_PORT"])
    assert env["SESSIONIZER_WEB_HOST"] == "0.0.0.0"
    assert _bindings(fwd)[port] == ("127.0.0.1", port)
    assert f"http://127.0.0.1:{port}/health" in " ".join(fwd["healthcheck"]["test"])
    # The worker writes the topic the forwarder reads when told to.
    assert "SESSIONIZER_INTEGRATIONS" in _env(services["worker"])
    jobs = {j["job_name"]: j for j in _yaml(PROMETHEUS)["scrape_configs"]}
    sd = jobs["sessionizer-forward"]["dns_sd_configs"]
    assert sd == [{"names": ["forwarder"], "type": "A", "port": port, "refresh_interval": "30s"}]
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


def test_grafana_provisioning_matches_the_stack() -> None:
    services = _yaml(COMPOSE)["services"]
    grafana = services["grafana"]
    mounts = {m.split(":")[0]: m.split(":")[1] for m in grafana["volumes"]}
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    sources = _yaml(DATASOURCE)["datasources"]
    assert len(sources) == 1
    source = sources[0]
    assert source["type"] == "prometheus"
    url = urlparse(source["url"])
    assert url.hostname == "prometheus" and "prometheus" in services
    assert any(str(p).endswith(f":{url.port}") for p in services["prometheus"]["ports"])
    # Every panel uses the provisioned datasource.
    for panel, target in _targets():
        for ds in (panel["datasource"], target["datasource"]):
            assert ds == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
    provider = _yaml(PROVIDER)["providers"][0]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    home = _env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/" + DASHBOARD.name


def _compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is not None:
        done = subprocess.run([docker, "compose", "version"], capture_output=True)
        if done.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def _compose_config(token: str | None) -> subprocess.CompletedProcess[str]:
    client = _compose_client()
    if client is None:
        pytest.skip("no docker compose client")
    env = {k: v for k, v in os.environ.items() if k != "SESSIONIZER_WEB_TOKEN"}
    if token is not None:
        env["SESSIONIZER_WEB_TOKEN"] = token
    return subprocess.run(
        [*client, "--profile", "traffic", "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )


def test_compose_config_validates() -> None:
    done = _compose_config("a-token-for-the-compose-check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_config_refuses_to_run_without_a_web_token() -> None:
    if (ROOT / ".env").exists():
        pytest.skip("a .env file next to docker-compose.yml may set the token")
    done = _compose_config(None)
    assert done.returncode != 0
    assert "SESSIONIZER_WEB_TOKEN" in done.stdout + done.stderr
