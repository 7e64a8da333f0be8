"""Apache Kafka from its Maven jars: one KRaft node or a three-node cluster on loopback.

The tests, the benches, the chaos suite and `make kafka` start Kafka here and
nowhere else (docs/broker.md, "Apache Kafka"). The jars come once from Maven
Central through `deploy/kafka/pom.xml` into `.cache/kafka-VERSION/lib`; every
JVM is a `procs` child that dies with the process that started it, even on
SIGKILL, and a cluster's directory goes when it stops (or, after a SIGKILL, at
the next start).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from sessionizer import procs

__all__ = [
    "POM",
    "KafkaCluster",
    "KafkaError",
    "KafkaUnavailable",
    "java_available",
    "kafka_version",
    "lib_dir",
    "sweep_stale",
]

_T = TypeVar("_T")

REPO = Path(__file__).resolve().parents[2]
POM = REPO / "deploy" / "kafka" / "pom.xml"
LOG4J = POM.with_name("log4j2.properties")
LOG4J_TOOLS = POM.with_name("log4j2-tools.properties")
CACHE = REPO / ".cache"
ENV_LIB = "SESSIONIZER_KAFKA_LIB"  # a folder of Kafka's jars to use instead of the cache
STARTED = "Kafka Server started"
_DIR_PREFIX = "sessionizer-kafka-"


class KafkaUnavailable(RuntimeError):
    """Kafka cannot run here (no Java, no Maven, no POM): tests skip, CI fails."""


class KafkaError(RuntimeError):
    """Kafka did not start, or a tool run against it failed."""


def java_available() -> str | None:
    """None if Java can run Kafka here, else why not (one line)."""
    if shutil.which("java") is None:
        return "no `java` on PATH (install OpenJDK 17: apt-get install openjdk-17-jre-headless)"
    return None


def kafka_version() -> str:
    """The pinned version: the POM's `kafka.version` (its one home)."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if match is None:  # pragma: no cover - the POM is part of the repository
        raise KafkaUnavailable(f"{POM} names no kafka.version")
    return match.group(1)


def lib_dir() -> Path:
    """The folder of Kafka's jars, fetched by Maven on first use (a minute, once)."""
    override = os.environ.get(ENV_LIB)
    if override:
        return Path(override)
    if not POM.exists():
        raise KafkaUnavailable(f"{POM} is missing (Kafka runs from a source checkout only)")
    lib = CACHE / f"kafka-{kafka_version()}" / "lib"
    if (lib / ".complete").exists():
        return lib
    if shutil.which("mvn") is None:
        raise KafkaUnavailable("no `mvn` on PATH to fetch Kafka's jars (apt-get install maven)")
    lib.parent.mkdir(parents=True, exist_ok=True)
    # One fetch at a time: `make kafka` and a test run may start together.
    with open(lib.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (lib / ".complete").exists():
            _fetch(lib)
    return lib


def _fetch(lib: Path) -> None:
    shutil.rmtree(lib, ignore_errors=True)
    args = ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
            f"-DoutputDirectory={lib}", "-DincludeScope=runtime"]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise KafkaUnavailable(f"Maven could not fetch Kafka's jars: {' | '.join(tail)}")
    (lib / ".complete").touch()


def _java(
    lib: Path, main: str, *args: str, heap_mb: int = 128, log: Path = LOG4J_TOOLS
) -> list[str]:
    return [
        "java",
        f"-Xmx{heap_mb}m",
        "-Xms64m",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log}",
        "-cp",
        f"{lib}/*",
        main,
        *args,
    ]


def _cluster_id() -> str:
    # Kafka's Uuid as text: URL-safe base64 of 16 random bytes, never starting with '-'.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def _in_thread(coro: Coroutine[Any, Any, _T]) -> _T:
    # Callable from sync code and from inside a running loop (pytest-asyncio, the benches).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _metadata(bootstrap: str, topics: list[str] | None = None) -> dict[str, Any]:
    """Metadata as the admin client describes it: brokers, and topics' partitions."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    await admin.start()
    try:
        cluster: dict[str, Any] = await admin.describe_cluster()
        cluster["topics"] = await admin.describe_topics(topics)
        return cluster
    finally:
        await admin.close()


def sweep_stale(root: Path) -> None:
    """Directories of clusters whose owner was SIGKILLed (their JVMs died with it)."""
    for d in root.glob(f"{_DIR_PREFIX}*"):
        owner = d.name.removeprefix(_DIR_PREFIX).split("-", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            shutil.rmtree(d, ignore_errors=True)


@dataclass
class Node:
    node_id: int
    port: int
    controller_port: int
    dir: Path
    proc: procs.Proc | None = None
    starts: int = 0  # "Kafka Server started" lines to expect in its log
    paused: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "kafka.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class KafkaCluster:
    """`with KafkaCluster(nodes=3) as kafka:` -> `kafka.bootstrap`, `kafka.url`, faults.

    Every node is broker and controller (combined KRaft); with 3 nodes topics
    default to replication factor 3 and `min.insync.replicas=2`.
    """

    nodes: int = 1
    port: int = 0  # the first node's port (its controller's is next); 0: free ports
    heap_mb: int = 384
    startup_timeout: float = 120.0
    settings: Mapping[str, str] = field(default_factory=dict)
    base_dir: Path | None = None
    members: list[Node] = field(default_factory=list, init=False)
    _owns_dir: bool = field(default=False, init=False)

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.members)

    @property
    def url(self) -> str:
        return "kafka://" + self.bootstrap

    @property
    def replication(self) -> int:
        return min(self.nodes, 3)

    def node(self, node_id: int) -> Node:
        return next(n for n in self.members if n.node_id == node_id)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> KafkaCluster:
        if reason := java_available():
            raise KafkaUnavailable(reason)
        lib = lib_dir()
        root = Path(tempfile.gettempdir())
        sweep_stale(root)
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-", dir=root))
            self._owns_dir = True
        self.members = [
            Node(i, *self._ports(i), self.base_dir / f"node-{i}") for i in range(1, self.nodes + 1)
        ]
        cluster_id = _cluster_id()
        try:
            formats = []
            for node in self.members:
                node.dir.mkdir(parents=True, exist_ok=True)
                (node.dir / "server.properties").write_text(self._properties(node))
                args = ["format", "-t", cluster_id, "-c", str(node.dir / "server.properties")]
                formats.append(
                    subprocess.Popen(
                        _java(lib, "kafka.tools.StorageTool", *args),
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                    )
                )
            for node, fmt in zip(self.members, formats, strict=True):
                out = fmt.communicate(timeout=120)[0].decode(errors="replace")
                if fmt.returncode != 0:
                    raise KafkaError(f"formatting node {node.node_id} failed: {out.strip()}")
            for node in self.members:
                self._spawn(lib, node)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _ports(self, node_id: int) -> tuple[int, int]:
        if self.port == 0:
            return procs.free_port(), procs.free_port()
        first = self.port + 2 * (node_id - 1)
        for port in (first, first + 1):
            if procs.port_busy(port):
                raise KafkaError(f"port {port} is already in use")
        return first, first + 1

    def _properties(self, node: Node) -> str:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.members)
        r = self.replication
        isr = min(2, r)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},"
            f"CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(node.dir / "data"),
            "num.partitions": "1",
            "default.replication.factor": str(r),
            "min.insync.replicas": str(isr),
            "offsets.topic.replication.factor": str(r),
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": str(r),
            "transaction.state.log.min.isr": str(isr),
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": str(r),
            "share.coordinator.state.topic.min.isr": str(isr),
            "group.initial.rebalance.delay.ms": "0",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(2 * 1024 * 1024),
            # A paused or dead follower leaves the ISR in seconds, not 30.
            "replica.lag.time.max.ms": "10000",
            "unclean.leader.election.enable": "false",
            # Tests and replays produce records with CreateTimes months old: time-based
            # retention deleted them at its next check (every 5 min), a flaky test.
            "log.retention.ms": "-1",
            **self.settings,
        }
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _spawn(self, lib: Path, node: Node) -> None:
        props = str(node.dir / "server.properties")
        args = _java(lib, "kafka.Kafka", props, heap_mb=self.heap_mb, log=LOG4J)
        # SIGKILL: a JVM's orderly stop can wait on a quorum that died with us.
        node.proc = procs.spawn(args, node.log_path, die_with_parent=signal.SIGKILL)
        node.starts += 1
        node.paused = False

    def wait_ready(self, timeout: float | None = None) -> None:
        """Every running node logged its start, and metadata lists every one of them."""
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        want = {n.node_id for n in self.members if n.running}
        while True:
            for node in self.members:
                if node.proc is not None and node.proc.poll() is not None:
                    raise KafkaError(
                        f"Kafka node {node.node_id} exited ({node.proc.returncode}): "
                        f"{self.log_tail(node)}"
                    )
            if all(self._started(n) for n in self.members if n.running):
                with contextlib.suppress(Exception):
                    if want <= self.broker_ids():
                        return
            if time.monotonic() > deadline:
                raise KafkaError(
                    f"Kafka not ready within {timeout or self.startup_timeout:g} s: "
                    + "; ".join(f"node {n.node_id}: {self.log_tail(n)}" for n in self.members)
                )
            time.sleep(0.2)

    @staticmethod
    def _started(node: Node) -> bool:
        try:
            return node.log_path.read_text(errors="replace").count(STARTED) >= node.starts
        except OSError:
            return False

    @staticmethod
    def log_tail(node: Node, lines: int = 2) -> str:
        try:
            text = node.log_path.read_text(errors="replace")
        except OSError:
            return "no log"
        kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return " | ".join(kept[-lines:]) or "no output"

    def stop(self) -> None:
        """SIGTERM every node (controlled shutdown), SIGKILL what is left; removes the data."""
        for node in self.members:
            if node.proc is not None:
                if node.paused:
                    procs.signal_group(node.proc, signal.SIGCONT)
                procs.signal_group(node.proc, signal.SIGTERM)
        for node in self.members:
            if node.proc is not None:
                procs.stop(node.proc, timeout=30.0)
                node.proc = None
        if self._owns_dir and self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- faults ----------------------------------------------------------------------------

    def kill(self, node_id: int) -> None:
        """SIGKILL one node, like a machine that loses power."""
        node = self.node(node_id)
        if node.proc is not None:
            procs.kill(node.proc)
            node.proc = None

    def pause(self, node_id: int) -> None:
        """SIGSTOP: the node is alive to the OS and silent to everyone else."""
        node = self.node(node_id)
        if node.proc is not None:
            procs.signal_group(node.proc, signal.SIGSTOP)
            node.paused = True

    def resume(self, node_id: int) -> None:
        node = self.node(node_id)
        if node.proc is not None:
            procs.signal_group(node.proc, signal.SIGCONT)
            node.paused = False

    def restart(self, node_id: int, wait: bool = True) -> None:
        """Starts a killed node again on its ports and data; waits until it is back."""
        node = self.node(node_id)
        if node.running:
            return
        self._spawn(lib_dir(), node)
        if wait:
            self.wait_ready()

    # -- what Kafka says -------------------------------------------------------------------

    def _live_bootstrap(self) -> str:
        live = [n.address for n in self.members if n.running and not n.paused]
        return ",".join(live) or self.bootstrap

    def broker_ids(self) -> set[int]:
        meta = _in_thread(_metadata(self._live_bootstrap(), []))
        return {int(b["node_id"]) for b in meta["brokers"]}

    def leaders(self, topic: str) -> dict[int, int]:
        """Partition -> leader node id (-1 while it has none)."""
        (desc,) = _in_thread(_metadata(self._live_bootstrap(), [topic]))["topics"]
        return {int(p["partition"]): int(p["leader"]) for p in desc["partitions"]}

    def under_replicated(self) -> int:
        """Partitions, over all topics, whose in-sync replicas are fewer than their replicas."""
        topics = _in_thread(_metadata(self._live_bootstrap()))["topics"]
        return sum(len(p["isr"]) < len(p["replicas"]) for t in topics for p in t["partitions"])

    def run_tool(self, main: str, *args: str, timeout: float = 60.0) -> str:
        """One of Kafka's command-line tools (its Java main class) against this cluster."""
        done = subprocess.run(
            _java(lib_dir(), main, "--bootstrap-server", self._live_bootstrap(), *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise KafkaError(f"{main} exited {done.returncode}: {done.stderr.strip()[-500:]}")
        return done.stdout

    def active_controller(self) -> int:
        """The KRaft quorum's leader (Metadata's controller id is any broker under KRaft)."""
        out = self.run_tool("org.apache.kafka.tools.MetadataQuorumCommand", "describe", "--status")
        match = re.search(r"^LeaderId:\s+(\d+)", out, re.M)
        if match is None:
            raise KafkaError(f"no LeaderId in: {out.strip()[:300]}")
        return int(match.group(1))

    def describe_group(self, group: str, *flags: str) -> str:
        """`kafka-consumer-groups --describe --group GROUP [FLAGS]`: offsets and lag, or
        with ``--members`` the members and their assignment."""
        return self.run_tool(
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--describe",
            "--group",
            group,
            *flags,
            *(("--verbose",) if "--members" in flags else ()),
        )


def main(argv: Sequence[str] | None = None) -> int:
    """`make kafka`: one node on 127.0.0.1:9092 until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sessionizer.tools.apache_kafka")
    parser.add_argument("--nodes", type=int, default=1, choices=(1, 3))
    parser.add_argument("--port", type=int, default=9092, help="the first node's port")
    args = parser.parse_args(argv)
    cluster = KafkaCluster(nodes=args.nodes, port=args.port)
    try:
        cluster.start()
    except (KafkaUnavailable, KafkaError) as err:
        print(f"sessionizer: {err}", flush=True)
        return 1
    print(f"Apache Kafka {kafka_version()} on {cluster.url} (Ctrl-C stops it)", flush=True)
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stopping and all(n.running for n in cluster.members):
            time.sleep(0.5)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
