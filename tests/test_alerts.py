"""The shipped alert rules (deploy/alerts.yml) under ``promtool test rules``.

deploy/alerts.test.yml holds the cases: each alert fires on the failure it names,
after its ``for``, and not on healthy series beside it. promtool comes with
Prometheus (Debian's ``prometheus`` package, .ci/install-prometheus); without it
the promtool tests skip and the structural checks still run.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "alerts.yml"
RULE_TESTS = DEPLOY / "alerts.test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (.ci/install-prometheus)"
)


def _yaml(path: Path) -> Any:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    return yaml.safe_load(path.read_text())


def _alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in _yaml(RULES)["groups"] for r in g["rules"] if "alert" in r}


def test_the_alerts_operators_need_are_shipped() -> None:
    names = set(_alerts())
    # lag, stalled partition, dead agent, dead-letter rate, forwarder failures (issue 20)
    assert {
        "SessionizerConsumerLag",
        "SessionizerPartitionStalled",
        "SessionizerEngineAgentDead",
        "SessionizerWorkerDown",
        "SessionizerDeadLetterRate",
        "SessionizerForwarderFailures",
    } <= names
    for name, rule in _alerts().items():
        assert rule["labels"]["severity"] in ("page", "ticket"), name
        assert rule["annotations"]["summary"], name


def test_every_alert_has_a_case_where_it_fires() -> None:
    fired = {
        case["alertname"]
        for test in _yaml(RULE_TESTS)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == set(_alerts())


def test_prometheus_loads_the_rules() -> None:
    config = _yaml(DEPLOY / "prometheus.yml")
    assert [DEPLOY / f for f in config["rule_files"]] == [RULES]
    assert _yaml(RULE_TESTS)["rule_files"] == [RULES.name]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120
    )


@needs_promtool
def test_promtool_checks_the_rules_and_the_config() -> None:
    done = _promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    done = _promtool("check", "config", "--syntax-only", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_rule_unit_tests_pass() -> None:
    done = _promtool("test", "rules", RULE_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
