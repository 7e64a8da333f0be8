"""TLS and SASL for real: what the embedded Tansu can do, and a secure front for the rest.

The embedded broker (Tansu 0.6.0, build 510f3e2) cannot serve TLS and cannot
complete a SASL login (docs/security.md has the evidence):

* ``--cert`` and ``--key`` are mutually exclusive on its command line and the
  TLS acceptor is never used: the listener is always plain TCP.
* ``--authentication`` offers SCRAM-SHA-256/512 only (no PLAIN), and its only
  storage engine (memory "dynostore") stores no SCRAM credentials, so every
  login fails as an unknown user. Users cannot be created either: the broker
  refuses AlterUserScramCredentials before authentication.

So the tests below do two things. Against Tansu itself: the SCRAM exchange our
clients start is really run and rejected, plain clients are refused, and
neither the error nor any log line carries the password. And through a
``SecureFront``: a small TLS and SASL (PLAIN, SCRAM-SHA-256/512, RFC 5802)
terminating proxy in this file, in front of a plain Tansu that advertises the
front's address, so every connection of every client (the worker's too) has
to pass TLS verification and a SASL login with the right password before it
reaches the broker. The front answers like Kafka: error 58
(SaslAuthenticationFailed) for bad credentials, error 33 for an unknown
mechanism, and a closed connection for requests before authentication.

Certificates are made per module with the ``openssl`` command line tool.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import logging
import os
import secrets
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.admin import (
    SaslAuthenticateRequest_v0,
    SaslAuthenticateResponse_v0,
    SaslAuthenticateResponse_v1,
    SaslHandShakeRequest_v1,
    SaslHandShakeResponse_v1,
)

from sessionizer import codec, procs
from sessionizer.kafka.clients import TopicSpec, client_options, ensure_topics
from sessionizer.procs import free_port
from sessionizer.settings import Secret, Security, Settings
from sessionizer.testing import T0, batch, launch, screen
from sessionizer.testing.harness import Names, WorkerProc, running
from sessionizer.tools.broker import BrokerUnavailable, _api_versions_ok, resolve_binary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PASSWORD = "s3cr3t-Pässwörd-€42"
WRONG = "n0t-the-Pässwörd-99"
USER = "svc-sessionizer"
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SASL_AUTHENTICATION_FAILED = 58
UNSUPPORTED_SASL_MECHANISM = 33


# --------------------------------------------------------------------------- helpers


def _tansu_bin() -> str:
    try:
        return resolve_binary()
    except BrokerUnavailable as err:
        pytest.skip(str(err))


@dataclass
class Tansu:
    """A Tansu process whose listener and advertised address may differ."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        procs.stop(self.proc, timeout=5)


def _start_tansu(log_path: Path, *extra: str, advertised_port: int | None = None) -> Tansu:
    port = free_port()
    listener = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    for name in ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"):
        env.pop(name, None)
    proc = procs.spawn(
        [
            _tansu_bin(),
            "broker",
            *("--listener-url", listener, "--advertised-listener-url", advertised),
            *("--storage-engine", "memory://tansu/", *extra),
        ],
        log_path,
        env=env,
    )
    tansu = Tansu(proc, port, log_path)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"tansu exited ({proc.returncode}): {tansu.log()[-500:]}")
        if _api_versions_ok("127.0.0.1", port, timeout=1.0):
            return tansu
        time.sleep(0.05)
    tansu.stop()
    raise AssertionError(f"tansu not ready: {tansu.log()[-500:]}")


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_pki(d: Path) -> Pki:
    """A throwaway CA, a server certificate for 127.0.0.1, a client certificate, another CA."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN=sessionizer test {ca}", cwd=d)  # fmt: skip
    exts = {
        "server": "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for name, ext in exts.items():
        (d / f"{name}.ext").write_text("basicConstraints=CA:FALSE\n" + ext)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=sessionizer test {name}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{name}.pem",
                 "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    return Pki(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        other_ca=d / "other-ca.pem",
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line tool is needed to make test certificates")
    return _make_pki(tmp_path_factory.mktemp("pki"))


# --------------------------------------------------------------------------- SASL server side


class _Login:
    """One SASL login on the server side: ``step`` takes a client message, returns the reply.

    Raises ``PermissionError`` for bad credentials.
    """

    done = False

    def step(self, data: bytes) -> bytes:
        raise NotImplementedError


class _PlainLogin(_Login):
    def __init__(self, users: Mapping[str, str]) -> None:
        self.users = users

    def step(self, data: bytes) -> bytes:
        _authzid, user, password = data.decode().split("\0")
        expected = self.users.get(user)
        if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
            raise PermissionError
        self.done = True
        return b""


class _ScramLogin(_Login):
    """RFC 5802 server side, as Kafka runs it (no channel binding)."""

    def __init__(self, users: Mapping[str, str], mechanism: str) -> None:
        self.users = users
        self.name = "sha256" if mechanism == "SCRAM-SHA-256" else "sha512"
        self.first: tuple[str, str, str, bytes, int] | None = None

    def _hmac(self, key: bytes, msg: bytes) -> bytes:
        return hmac.new(key, msg, self.name).digest()

    def step(self, data: bytes) -> bytes:
        text = data.decode()
        if self.first is None:
            _gs2, _authzid, bare = text.split(",", 2)
            attrs = dict(kv.split("=", 1) for kv in bare.split(","))
            user = attrs["n"].replace("=2C", ",").replace("=3D", "=")
            if user not in self.users:
                raise PermissionError
            nonce, salt, iterations = attrs["r"] + secrets.token_hex(12), os.urandom(16), 4096
            server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={iterations}"
            self.first = (user, nonce, bare + "," + server_first, salt, iterations)
            return server_first.encode()
        user, nonce, auth_message, salt, iterations = self.first
        without_proof, _, proof = text.rpartition(",p=")
        if dict(kv.split("=", 1) for kv in without_proof.split(",")).get("r") != nonce:
            raise PermissionError
        auth_message += "," + without_proof
        salted = hashlib.pbkdf2_hmac(self.name, self.users[user].encode(), salt, iterations)
        client_key = self._hmac(salted, b"Client Key")
        stored_key = hashlib.new(self.name, client_key).digest()
        signature = self._hmac(stored_key, auth_message.encode())
        expected = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        if not hmac.compare_digest(expected, base64.b64decode(proof)):
            raise PermissionError
        self.done = True
        server_signature = self._hmac(self._hmac(salted, b"Server Key"), auth_message.encode())
        return b"v=" + base64.b64encode(server_signature)


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


def _frame(correlation_id: int, body: bytes) -> bytes:
    payload = struct.pack(">i", correlation_id) + body
    return struct.pack(">i", len(payload)) + payload


@dataclass
class SecureFront:
    """TLS and/or SASL termination in front of a plain broker, on its own thread and loop."""

    upstream_port: int = 0
    tls: ssl.SSLContext | None = None
    users: Mapping[str, str] | None = None
    mechanisms: tuple[str, ...] = MECHANISMS
    port: int = 0
    logins: list[tuple[str, str]] = field(default_factory=list)  # (mechanism, outcome)
    refused: int = 0  # connections closed for a request before authentication
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    def start(self) -> SecureFront:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return

        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for w in list(self._writers):
                w.close()
            await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            self._writers.add(up_writer)
            if self.users is None or await self._authenticate(reader, writer, up_reader, up_writer):
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.close()
                    self._writers.discard(w)

    async def _authenticate(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> bool:
        assert self.users is not None
        login: _Login | None = None
        mechanism = ""
        while True:
            request = await _read_frame(reader)
            api_key, version, correlation_id, client_id_len = struct.unpack(">hhih", request[:10])
            body = request[10 + max(client_id_len, 0) :]
            if api_key == 18:  # ApiVersions: the broker's own answer
                up_writer.write(struct.pack(">i", len(request)) + request)
                response = await _read_frame(up_reader)
                writer.write(struct.pack(">i", len(response)) + response)
            elif api_key == 17 and version == 1 and login is None:  # SaslHandshake
                mechanism = SaslHandShakeRequest_v1.decode(io.BytesIO(body)).mechanism
                known = mechanism in self.mechanisms
                if not known:
                    self.logins.append((mechanism, "unsupported"))
                answer = SaslHandShakeResponse_v1(
                    0 if known else UNSUPPORTED_SASL_MECHANISM, list(self.mechanisms)
                )
                writer.write(_frame(correlation_id, answer.encode()))
                if not known:
                    await writer.drain()
                    return False
                login = (
                    _PlainLogin(self.users)
                    if mechanism == "PLAIN"
                    else _ScramLogin(self.users, mechanism)
                )
            elif api_key == 36 and version in (0, 1) and login is not None:  # SaslAuthenticate
                token = SaslAuthenticateRequest_v0.decode(io.BytesIO(body)).sasl_auth_bytes
                try:
                    reply, error, message = login.step(token), 0, None
                except (PermissionError, ValueError, KeyError, UnicodeDecodeError):
                    reply, error = b"", SASL_AUTHENTICATION_FAILED
                    message = (
                        "Authentication failed during authentication due to invalid"
                        f" credentials with SASL mechanism {mechanism}"
                    )
                # Recorded before the answer, which the client may act on at once.
                if error or login.done:
                    self.logins.append((mechanism, "failed" if error else "ok"))
                fields = [error, message, reply] + ([0] if version == 1 else [])
                cls = SaslAuthenticateResponse_v1 if version == 1 else SaslAuthenticateResponse_v0
                writer.write(_frame(correlation_id, cls(*fields).encode()))
                await writer.drain()
                if error or login.done:
                    return not error
            else:  # like Kafka: any other request before authentication ends the connection
                self.refused += 1
                return False
            await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        writer.close()


def _server_tls(pki: Pki, *, client_auth: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if client_auth:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki.ca)
    return ctx


FrontFactory = Callable[..., SecureFront]


@pytest.fixture
def front(tmp_path: Path, pki: Pki) -> Iterator[FrontFactory]:
    """``front(tls=True, users={...}, client_auth=False)``: a secure front and its own Tansu."""
    started: list[tuple[SecureFront, Tansu]] = []

    def make(
        *,
        tls: bool = False,
        users: Mapping[str, str] | None = None,
        client_auth: bool = False,
    ) -> SecureFront:
        sf = SecureFront(
            tls=_server_tls(pki, client_auth=client_auth) if tls else None, users=users
        )
        sf.start()
        try:
            # Tansu advertises the front, so metadata sends every client back through it.
            tansu = _start_tansu(tmp_path / f"tansu-{len(started)}.log", advertised_port=sf.port)
        except BaseException:
            sf.stop()
            raise
        sf.upstream_port = tansu.port
        started.append((sf, tansu))
        return sf

    yield make
    for sf, tansu in started:
        sf.stop()
        tansu.stop()


def _settings(bootstrap: str, protocol: str = "PLAINTEXT", **kw: Any) -> Settings:
    password = kw.pop("password", None)
    return Settings(
        broker_url=f"kafka://{bootstrap}",
        broker_hosts=(bootstrap,),
        security=Security(
            protocol=protocol,  # type: ignore[arg-type]
            sasl_password=Secret(password) if password is not None else None,
            **kw,
        ),
    )


def _sasl(bootstrap: str, protocol: str, mechanism: str, pki: Pki, password: str) -> Settings:
    ssl_files = {"ssl_cafile": pki.ca} if protocol == "SASL_SSL" else {}
    return _settings(
        bootstrap,
        protocol,
        sasl_mechanism=mechanism,
        sasl_username=USER,
        password=password,
        **ssl_files,
    )


async def _round_trip(settings: Settings, topic: str) -> tuple[bytes | None, bytes | None]:
    """Admin (topic creation), producer and consumer, all from client_options(settings)."""
    await ensure_topics(settings, [TopicSpec(topic, 1)], timeout_s=20)
    producer = AIOKafkaProducer(**client_options(settings), request_timeout_ms=10_000)
    await asyncio.wait_for(producer.start(), 20)
    try:
        await producer.send_and_wait(topic, b"value-1", key=b"key-1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        **client_options(settings), enable_auto_commit=False, request_timeout_ms=10_000
    )
    await asyncio.wait_for(consumer.start(), 20)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        msg = await asyncio.wait_for(consumer.getone(), 20)
        return msg.key, msg.value
    finally:
        await consumer.stop()


async def _connect_error(settings: Settings) -> BaseException:
    """The error of starting a producer with these settings (it must fail)."""
    producer = AIOKafkaProducer(**client_options(settings), request_timeout_ms=5_000)
    try:
        await asyncio.wait_for(producer.start(), 30)
    except Exception as err:
        return err
    finally:
        await producer.stop()
    raise AssertionError("the connection was expected to fail")


def _assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in (PASSWORD, WRONG):
            assert secret not in text
            assert repr(secret.encode())[2:-1] not in text


def _topic() -> str:
    return f"security-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- the embedded broker


def test_embedded_broker_serves_no_tls(tmp_path: Path, pki: Pki) -> None:
    """Pins the limit: if a future Tansu serves TLS, test SSL against it directly."""
    both = subprocess.run(
        [_tansu_bin(), "broker", "--cert", str(pki.server_cert), "--key", str(pki.server_key)],
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert both.returncode != 0
    assert b"cannot be used with" in both.stderr

    tansu = _start_tansu(tmp_path / "tansu-cert.log", "--cert", str(pki.server_cert))
    try:
        # Accepted with --cert alone, but the listener still speaks plain Kafka...
        assert _api_versions_ok("127.0.0.1", tansu.port, timeout=2.0)
        # ...and a TLS handshake gets no answer.
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        with (
            socket.create_connection(("127.0.0.1", tansu.port), timeout=2.0) as raw,
            pytest.raises((ssl.SSLError, OSError)),
            ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            pass
    finally:
        tansu.stop()


@pytest.fixture
def authenticating_tansu(tmp_path: Path) -> Iterator[Tansu]:
    tansu = _start_tansu(tmp_path / "tansu-auth.log", "--authentication")
    yield tansu
    tansu.stop()


async def test_embedded_broker_with_authentication_refuses_plain_clients(
    authenticating_tansu: Tansu,
) -> None:
    err = await _connect_error(_settings(f"127.0.0.1:{authenticating_tansu.port}"))
    assert isinstance(err, KafkaConnectionError)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_embedded_broker_runs_our_scram_exchange_and_rejects_it(
    authenticating_tansu: Tansu, mechanism: str, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """Tansu negotiates SCRAM and answers each step, but stores no credentials to accept."""
    caplog.set_level(logging.DEBUG)
    bootstrap = f"127.0.0.1:{authenticating_tansu.port}"
    err = await _connect_error(_sasl(bootstrap, "SASL_PLAINTEXT", mechanism, pki, PASSWORD))
    # The server-final message is "e=unknown-user" (RFC 5802); aiokafka only reads
    # "v=", hence a KeyError. A Kafka broker answers error 58 instead (see below).
    assert isinstance(err, KeyError | KafkaConnectionError)
    assert "SaslAuthenticateRequest" in caplog.text  # the exchange reached SaslAuthenticate
    _assert_no_secret(str(err), repr(err), caplog.text, authenticating_tansu.log())


async def test_embedded_broker_has_no_plain_mechanism(
    authenticating_tansu: Tansu, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bootstrap = f"127.0.0.1:{authenticating_tansu.port}"
    err = await _connect_error(_sasl(bootstrap, "SASL_PLAINTEXT", "PLAIN", pki, PASSWORD))
    assert isinstance(err, KafkaConnectionError)
    assert "NoSharedMechanism" in authenticating_tansu.log()
    _assert_no_secret(str(err), caplog.text, authenticating_tansu.log())


# --------------------------------------------------------------------------- TLS


async def test_ssl_round_trip(front: FrontFactory, pki: Pki) -> None:
    sf = front(tls=True)
    got = await _round_trip(_settings(sf.bootstrap, "SSL", ssl_cafile=pki.ca), _topic())
    assert got == (b"key-1", b"value-1")


async def test_mutual_tls_round_trip(front: FrontFactory, pki: Pki) -> None:
    sf = front(tls=True, client_auth=True)
    settings = _settings(
        sf.bootstrap,
        "SSL",
        ssl_cafile=pki.ca,
        ssl_certfile=pki.client_cert,
        ssl_keyfile=pki.client_key,
    )
    assert await _round_trip(settings, _topic()) == (b"key-1", b"value-1")


async def test_mutual_tls_without_a_client_certificate_fails(front: FrontFactory, pki: Pki) -> None:
    sf = front(tls=True, client_auth=True)
    err = await _connect_error(_settings(sf.bootstrap, "SSL", ssl_cafile=pki.ca))
    assert isinstance(err, KafkaConnectionError)


@pytest.mark.parametrize("cafile", ["other", "system"])
async def test_ssl_with_the_wrong_or_no_ca_fails_clearly(
    front: FrontFactory, pki: Pki, cafile: str, caplog: pytest.LogCaptureFixture
) -> None:
    sf = front(tls=True)
    ca = {"ssl_cafile": pki.other_ca} if cafile == "other" else {}
    err = await _connect_error(_settings(sf.bootstrap, "SSL", **ca))
    assert isinstance(err, KafkaConnectionError)
    # aiokafka logs the cause for each bootstrap address, then raises "Unable to bootstrap".
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


async def test_plaintext_client_against_tls_fails(front: FrontFactory) -> None:
    sf = front(tls=True)
    err = await _connect_error(_settings(sf.bootstrap))
    assert isinstance(err, KafkaConnectionError | asyncio.TimeoutError)


# --------------------------------------------------------------------------- SASL


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_sasl_round_trip(
    front: FrontFactory, pki: Pki, protocol: str, mechanism: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sf = front(tls=protocol == "SASL_SSL", users={USER: PASSWORD})
    settings = _sasl(sf.bootstrap, protocol, mechanism, pki, PASSWORD)
    assert await _round_trip(settings, _topic()) == (b"key-1", b"value-1")
    assert sf.logins and all(login == (mechanism, "ok") for login in sf.logins)
    assert sf.refused == 0
    # aiokafka logs each SaslAuthenticate request at DEBUG; for PLAIN that carries the
    # password in clear. Our log filter keeps the line and drops the payload.
    assert "SaslAuthenticateRequest_v1(***)" in caplog.text
    assert f"Authenticated as {USER} via {mechanism}" in caplog.text
    _assert_no_secret(caplog.text)


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_sasl_wrong_password_fails_clearly(
    front: FrontFactory, pki: Pki, protocol: str, mechanism: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sf = front(tls=protocol == "SASL_SSL", users={USER: PASSWORD})
    err = await _connect_error(_sasl(sf.bootstrap, protocol, mechanism, pki, WRONG))
    assert isinstance(err, KafkaConnectionError)
    assert "SaslAuthenticationFailed" in caplog.text
    assert f"invalid credentials with SASL mechanism {mechanism}" in caplog.text
    assert sf.logins and all(outcome == "failed" for _, outcome in sf.logins)
    _assert_no_secret(str(err), repr(err), caplog.text)


async def test_sasl_unsupported_mechanism_fails_clearly(
    front: FrontFactory, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    sf = front(users={USER: PASSWORD})
    sf.mechanisms = ("SCRAM-SHA-512",)
    err = await _connect_error(_sasl(sf.bootstrap, "SASL_PLAINTEXT", "PLAIN", pki, PASSWORD))
    assert isinstance(err, KafkaConnectionError)
    assert "UnsupportedSaslMechanism" in caplog.text
    _assert_no_secret(str(err), caplog.text)


async def test_front_refuses_unauthenticated_clients(front: FrontFactory) -> None:
    """The control: without SASL a client gets nowhere, so a round trip proves the login."""
    sf = front(users={USER: PASSWORD})
    err = await _connect_error(_settings(sf.bootstrap))
    assert isinstance(err, KafkaConnectionError)
    assert sf.refused >= 1


# --------------------------------------------------------------------------- the worker


@pytest.mark.timeout(300)
async def test_worker_over_sasl_ssl_scram(front: FrontFactory, pki: Pki, tmp_path: Path) -> None:
    """The Faust worker with SASL_SSL + SCRAM-SHA-512: every connection verifies and logs in."""
    sf = front(tls=True, users={USER: PASSWORD})
    names = Names(f"sec-{uuid.uuid4().hex[:8]}")
    security_env = {
        "SESSIONIZER_SECURITY_PROTOCOL": "SASL_SSL",
        "SESSIONIZER_SASL_MECHANISM": "SCRAM-SHA-512",
        "SESSIONIZER_SASL_USERNAME": USER,
        "SESSIONIZER_SASL_PASSWORD": PASSWORD,
        "SESSIONIZER_SSL_CAFILE": str(pki.ca),
    }
    # At DEBUG, aiokafka's SASL request dumps are in the worker's log.
    worker = WorkerProc(
        sf.bootstrap, names, tmp_path, partitions=2, env=security_env, loglevel="debug"
    )
    settings = _sasl(sf.bootstrap, "SASL_SSL", "SCRAM-SHA-512", pki, PASSWORD)
    settings = Settings(
        broker_url=settings.broker_url,
        broker_hosts=settings.broker_hosts,
        security=settings.security,
        topics=type(settings.topics)(**names.topics),
        partitions=2,
    )
    async with running(worker, timeout=180, clean=False):
        producer = AIOKafkaProducer(**client_options(settings))
        await producer.start()
        try:
            record = batch("secure-device", launch(T0), screen(T0 + 1000))
            await producer.send_and_wait(
                names.topics["raw_events"], codec.dumps(record), key=b"secure-device"
            )
        finally:
            await producer.stop()
        out = await _read_until(settings, names.topics["sessionized_events"], timeout=120)
        events = [e for r in out for e in r.get("events", [r])]
        assert any("session_uuid" in (e.get("data") or {}) for e in events), out
    log = worker.log()
    assert "Worker]: Ready" in log
    assert "SaslAuthenticateRequest_v1(***)" in log  # the DEBUG dump is there, redacted
    _assert_no_secret(log)
    assert sf.refused == 0, "a worker connection skipped the SASL login"
    assert len(sf.logins) >= 3 and all(x == ("SCRAM-SHA-512", "ok") for x in sf.logins)


async def _read_until(settings: Settings, topic: str, *, timeout: float) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        parts: set[int] | None = None
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await consumer._client.force_metadata_update()
                await asyncio.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(parts or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=300)).values():
                out += [codec.loads(m.value) for m in msgs if m.value is not None]
            if out:
                return out
        raise AssertionError(f"nothing on {topic} within {timeout}s")
    finally:
        await consumer.stop()
