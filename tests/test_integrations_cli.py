from click.testing import CliRunner

from sessionizer.cli import main
from sessionizer.tools import workload

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


def test_process_file_takes_the_ga4_client_id_field(tmp_path, monkeypatch):
    """The setting reaches process-file --integrations: ids from the field where it is
    valid, derived where it is missing or not a valid id; other destinations unchanged."""
    import json
    import re

    from sessionizer.integrations import ga4

    inp = tmp_path / "in.jsonl"
    workload.generate_to_file(inp, 300, devices=6, seed=4)
    lines = []
    for i, line in enumerate(inp.read_text().splitlines()):
        try:
            rec = json.loads(line)
        except ValueError:
            lines.append(line)
            continue
        if isinstance(rec, dict) and i % 4:
            web = rec.get("device_info", {}).get("platform") == "web"
            good = f"{i}.{len(lines)}" if web else f"{i:032x}"
            rec["user_attributes"] = {"ga_client_id": good if i % 4 != 3 else {"no": 1}}
        lines.append(json.dumps(rec))
    inp.write_text("\n".join(lines) + "\n")
    plain = _run(tmp_path, inp, "plain")
    monkeypatch.setenv("SESSIONIZER_GA4_CLIENT_ID_FIELD", "user_attributes.ga_client_id")
    field = _run(tmp_path, inp, "field")
    assert {n: v for n, v in field.items() if n != "ga4"} == {
        n: v for n, v in plain.items() if n != "ga4"
    }
    derived = set()
    for line in plain["ga4"].splitlines():
        body = json.loads(line)
        derived.add(body.get("client_id") or body.get("app_instance_id"))
    got = [json.loads(line) for line in field["ga4"].splitlines()]
    ids = {b.get("client_id") or b.get("app_instance_id") for b in got}
    assert ids & derived and ids - derived
    for b in got:
        if "app_instance_id" in b:
            assert re.fullmatch(r"[0-9a-f]{32}", b["app_instance_id"])
        assert ga4.MAX_EVENTS >= len(b["events"]) >= 1
    assert sum(len(b["events"]) for b in got) == sum(
        len(json.loads(line)["events"]) for line in plain["ga4"].splitlines()
    )


def test_process_file_refuses_a_bad_ga4_client_id_field(tmp_path, monkeypatch):
    inp = tmp_path / "in.jsonl"
    workload.generate_to_file(inp, 10, devices=1, seed=3)
    monkeypatch.setenv("SESSIONIZER_GA4_CLIENT_ID_FIELD", "a..b")
    r = CliRunner().invoke(
        main, ["process-file", str(inp), "--out", str(tmp_path / "o"), "--integrations", "ga4"]
    )
    assert r.exit_code != 0
    assert "ga4_client_id_field (SESSIONIZER_GA4_CLIENT_ID_FIELD)" in r.output
