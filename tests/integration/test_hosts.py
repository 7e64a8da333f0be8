"""Workers on two hosts: each advertises its own address, and /sessions is forwarded
between them.

The two hosts are two network namespaces joined by a veth pair, with addresses
from 198.18.0.0/15 (RFC 2544's benchmark range, used on that link only). Each
worker binds ``0.0.0.0`` (as the image does) and advertises its veth address
through ``web_advertised_url``. The broker runs in the first namespace on its
veth address; the client (produce, HTTP) runs in the second. Needs root and
iproute2; skipped otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionizer import codec, procs
from sessionizer.stream.web import device_partition
from sessionizer.testing import T0, batch, launch, screen, set_attr
from sessionizer.testing.harness import Names, WorkerProc, running
from sessionizer.tools.broker import BrokerUnavailable, resolve_binary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

PARTITIONS = 4
APP = "com.example.shop"
TOKEN = "hosts-web-token-Qm3Zr8Lw2Kp6Vx9T"
ADDRESSES = ("198.18.0.1", "198.18.0.2")
PORT = 6066  # each namespace has its own ports: both workers use the default

# Runs in the second namespace: waits until both workers share the partitions,
# produces, then asks both workers for every device. Prints what it saw as JSON.
CLIENT = r"""
import asyncio, json, sys, time
import aiohttp
from sessionizer.testing.harness import produce

args = json.loads(sys.stdin.read())
urls, bearer = args["urls"], {"Authorization": "Bearer " + args["token"]}

async def get(s, url, path):
    async with s.get(url + path, headers=bearer) as r:
        return r.status, await r.json(content_type=None)

async def until(probe, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = await probe()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            got = None
        if got:
            return got
        await asyncio.sleep(0.3)
    raise SystemExit("timed out: " + probe.__name__)

async def main():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
        async def split():
            health = [await get(s, u, "/health") for u in urls]
            if any(status != 200 for status, _ in health):
                return None
            parts = [set(body["partitions"]) for _, body in health]
            ok = all(parts) and not parts[0] & parts[1] and len(parts[0] | parts[1]) == args["n"]
            return [body for _, body in health] if ok else None

        health = await until(split, 200)
        records = [bytes.fromhex(r) for r in args["records"]]
        await produce(args["bootstrap"], args["topic"], records)

        async def known():
            return all([(await get(s, urls[0], p))[0] == 200 for p in args["paths"]])

        await until(known, 90)
        answers = {u: {p: await get(s, u, p) for p in args["paths"]} for u in urls}
    print(json.dumps({"health": health, "answers": answers}))

asyncio.run(main())
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair: (first, second)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (`ip netns`, `ip link`) to make two hosts")
    tag = secrets.token_hex(3)
    spaces = (f"sz{tag}a", f"sz{tag}b")
    made: list[str] = []
    try:
        for ns in spaces:
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("link", "add", f"v{tag}a", "type", "veth", "peer", "name", f"v{tag}b")
        for ns, addr, dev in zip(spaces, ADDRESSES, (f"v{tag}a", f"v{tag}b"), strict=True):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
    except (subprocess.CalledProcessError, OSError) as err:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        stderr = getattr(err, "stderr", "") or err
        pytest.skip(f"cannot make network namespaces here: {str(stderr).strip()}")
    try:
        yield spaces
    finally:
        for ns in spaces:  # the veth pair goes with them
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def _ready_urls(log: str) -> set[str]:
    return set(re.findall(r"sessionizer worker ready: .*; web (\S+)", log))


def _in(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


async def test_sessions_is_forwarded_between_workers_on_two_hosts(
    two_hosts: tuple[str, str], tmp_path: Path
) -> None:
    try:
        tansu = resolve_binary()
    except BrokerUnavailable as err:
        pytest.skip(str(err))
    bootstrap = f"{ADDRESSES[0]}:9092"
    listener = f"tcp://{bootstrap}"
    tansu_args = ["--listener-url", listener, "--advertised-listener-url", listener]
    broker = procs.spawn(
        _in(two_hosts[0], [tansu, "broker", *tansu_args, "--storage-engine", "memory://tansu/"]),
        tmp_path / "broker.log",
        die_with_parent=signal.SIGKILL,
    )
    names = Names(f"hosts-{uuid.uuid4().hex[:8]}")
    urls = [f"http://{addr}:{PORT}" for addr in ADDRESSES]
    workers = []
    for ns, url, tag in zip(two_hosts, urls, "ab", strict=True):
        env = {
            "SESSIONIZER_WEB_HOST": "0.0.0.0",
            "SESSIONIZER_WEB_PORT": str(PORT),
            "SESSIONIZER_WEB_ADVERTISED_URL": url,
            "SESSIONIZER_WEB_TOKEN": TOKEN,
        }
        w = WorkerProc(bootstrap, names, tmp_path, partitions=PARTITIONS, env=env, tag=tag)
        w.argv = _in(ns, w.argv)
        workers.append(w)
    devices: dict[int, str] = {}
    i = 0
    while len(devices) < PARTITIONS:
        devices.setdefault(device_partition(f"host-{i}".encode(), PARTITIONS), f"host-{i}")
        i += 1
    records = [
        codec.dumps(batch(d, launch(T0), screen(T0 + 1000), set_attr(T0 + 2000, "n", p)))
        for p, d in devices.items()
    ]
    paths = {p: f"/sessions/{APP}/{d}" for p, d in devices.items()}
    try:
        async with running(*workers, timeout=180, clean=False):
            args = {
                "urls": urls,
                "token": TOKEN,
                "bootstrap": bootstrap,
                "topic": names.topics["raw_events"],
                "records": [r.hex() for r in records],
                "paths": list(paths.values()),
                "n": PARTITIONS,
            }
            client = subprocess.run(
                _in(two_hosts[1], [sys.executable, "-c", CLIENT]),
                input=json.dumps(args),
                capture_output=True,
                text=True,
                timeout=330,
                check=False,
            )
            logs = [w.log() for w in workers]
    finally:
        procs.stop(broker)
    assert client.returncode == 0, client.stderr[-3000:] + "\n".join(log[-2000:] for log in logs)
    seen = json.loads(client.stdout)
    for url, log in zip(urls, logs, strict=True):
        assert _ready_urls(log) == {url}  # its own address, never 0.0.0.0
    owner: dict[int, str] = {}
    for body in seen["health"]:
        owner |= {p: body["url"] for p in body["partitions"]}
    assert set(owner.values()) == set(urls)  # each owns some: some answers are forwarded
    for p, path in paths.items():
        answers: list[Any] = [seen["answers"][url][path] for url in urls]
        for status, body in answers:
            assert status == 200, (path, body)
            assert body["served_by"] == owner[p] and body["partition"] == p
            assert body["open_session"]["session_attributes"] == {"n": p}
        assert answers[0] == answers[1]


async def test_web_port_0_takes_a_free_port_and_says_which(broker: Any, tmp_path: Path) -> None:
    """A second worker on a host needs no port of its own choosing (docs/operations.md)."""
    import aiohttp

    names = Names(f"hosts-{uuid.uuid4().hex[:8]}")
    w = WorkerProc(broker.bootstrap, names, tmp_path, env={"SESSIONIZER_WEB_PORT": "0"})
    async with running(w, clean=False):
        deadline = time.monotonic() + 120  # Faust's "Ready" can come before the assignment
        while not (urls := _ready_urls(w.log())) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        (url,) = urls
        port = int(url.rpartition(":")[2])
        assert url == f"http://127.0.0.1:{port}" and port != 0
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=15)) as r,
        ):
            assert (await r.json())["url"] == url
