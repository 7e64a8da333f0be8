from click.testing import CliRunner

from sessionizer import workload
from sessionizer.cli import main

NAMES = "amplitude,ga4,snowplow,mixpanel,segment"


def _run(tmp_path, inp, tag):
    out = tmp_path / tag
    r = CliRunner().invoke(
        main, ["process-file", str(inp), "--out", str(out), "--integrations", NAMES]
    )
    assert r.exit_code == 0, r.output
    return {n: (out / "integrations" / f"{n}.jsonl").read_bytes() for n in NAMES.split(",")}


def test_process_file_integrations_deterministic(tmp_path):
    inp = tmp_path / "in.jsonl"
    workload.generate_to_file(inp, 500, devices=10, seed=3)
    a = _run(tmp_path, inp, "a")
    b = _run(tmp_path, inp, "b")
    assert a == b
    assert all(a[n] for n in a)


def test_unknown_integration(tmp_path):
    inp = tmp_path / "in.jsonl"
    workload.generate_to_file(inp, 10, devices=1, seed=3)
    r = CliRunner().invoke(
        main, ["process-file", str(inp), "--out", str(tmp_path / "o"), "--integrations", "nope"]
    )
    assert r.exit_code != 0
