"""Connection security without a broker: settings -> aiokafka options and Faust credentials.

Every protocol/mechanism combination maps to the same aiokafka keyword arguments
whether a plain aiokafka client (client_options) or Faust (broker_credentials,
through its aiokafka driver) builds the connection; the SASL password shows in
no repr, str, error or log line. tests/integration/test_security_broker.py connects
for real.
"""

from __future__ import annotations

import gc
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import SaslAuthenticateRequest_v1
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types.auth import AuthProtocol, SASLMechanism

from sessionizer.core.config import ConfigError
from sessionizer.kafka import security as security_module
from sessionizer.kafka.clients import client_options
from sessionizer.kafka.security import (
    MaskedStr,
    aiokafka_options,
    bearer_headers,
    faust_credentials,
    is_loopback,
    redact_logs,
    ssl_context,
    web_auth,
)
from sessionizer.settings import Secret, Security, Settings, load_settings

PASSWORD = "s3cr3t-Pässwörd-€42"
USER = "svc-sessionizer"
MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
SASL_PROTOCOLS = ["SASL_PLAINTEXT", "SASL_SSL"]


def _secret_forms() -> list[str]:
    return [PASSWORD, repr(PASSWORD)[1:-1], repr(PASSWORD.encode())[2:-1]]


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for form in _secret_forms():
            assert form not in text


def _sec(protocol: str, mechanism: str | None = None, **kw: Any) -> Security:
    sasl = protocol.startswith("SASL")
    return Security(
        protocol=protocol,  # type: ignore[arg-type]
        sasl_mechanism=mechanism if sasl else None,  # type: ignore[arg-type]
        sasl_username=USER if sasl else None,
        sasl_password=Secret(PASSWORD) if sasl else None,
        **kw,
    )


def _combinations() -> list[tuple[str, str | None]]:
    return [("PLAINTEXT", None), ("SSL", None)] + [
        (p, m) for p in SASL_PROTOCOLS for m in MECHANISMS
    ]


def _comparable(opts: dict[str, Any]) -> dict[str, Any]:
    """Options with the TLS context replaced by what matters about it."""
    out = dict(opts)
    ctx = out.pop("ssl_context", None)
    if ctx is not None:
        assert isinstance(ctx, ssl.SSLContext)
        out["ssl_context"] = (ctx.verify_mode, ctx.check_hostname, ctx.minimum_version)
    if "sasl_plain_password" in out:
        out["sasl_plain_password"] = str(out["sasl_plain_password"])
    out.setdefault("security_protocol", "PLAINTEXT")
    return {k: v for k, v in out.items() if v is not None}


# --------------------------------------------------------------------------- mapping


@pytest.mark.parametrize(("protocol", "mechanism"), _combinations())
def test_aiokafka_options_for_every_combination(protocol: str, mechanism: str | None) -> None:
    opts = aiokafka_options(_sec(protocol, mechanism))
    if protocol == "PLAINTEXT":
        assert opts == {}
        return
    assert opts["security_protocol"] == protocol
    tls = protocol in ("SSL", "SASL_SSL")
    assert ("ssl_context" in opts) is tls
    if tls:
        ctx = opts["ssl_context"]
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    if protocol.startswith("SASL"):
        assert opts["sasl_mechanism"] == mechanism
        assert opts["sasl_plain_username"] == USER
        assert opts["sasl_plain_password"] == PASSWORD
        assert isinstance(opts["sasl_plain_password"], MaskedStr)
    else:
        assert not any(k.startswith("sasl") for k in opts)


@pytest.mark.parametrize(("protocol", "mechanism"), _combinations())
def test_faust_credentials_for_every_combination(protocol: str, mechanism: str | None) -> None:
    sec = _sec(protocol, mechanism)
    creds = faust_credentials(sec)
    if protocol == "PLAINTEXT":
        assert creds is None
    elif protocol == "SSL":
        assert isinstance(creds, SSLCredentials)
        assert creds.protocol is AuthProtocol.SSL
    else:
        assert isinstance(creds, SASLCredentials)
        assert creds.protocol is AuthProtocol(protocol)
        assert creds.mechanism is SASLMechanism(mechanism)
        assert creds.username == USER and creds.password == PASSWORD
        assert (creds.ssl_context is not None) is (protocol == "SASL_SSL")
    # What Faust's aiokafka driver makes of them is what our own clients get.
    assert _comparable(credentials_to_aiokafka_auth(creds)) == _comparable(aiokafka_options(sec))


def test_client_options_adds_security_to_the_bootstrap() -> None:
    plain = Settings(broker_hosts=("k1:9092", "k2:9092"))
    assert client_options(plain) == {"bootstrap_servers": "k1:9092,k2:9092"}
    sasl = Settings(broker_hosts=("k1:9093",), security=_sec("SASL_SSL", "SCRAM-SHA-512"))
    opts = client_options(sasl)
    assert opts["bootstrap_servers"] == "k1:9093"
    assert _comparable(opts) == _comparable(
        {"bootstrap_servers": "k1:9093", **aiokafka_options(sasl.security)}
    )


@pytest.mark.parametrize(("protocol", "mechanism"), _combinations())
async def test_aiokafka_clients_accept_the_options(protocol: str, mechanism: str | None) -> None:
    """The constructors validate the security arguments; nothing connects here."""
    settings = Settings(broker_hosts=("127.0.0.1:1",), security=_sec(protocol, mechanism))
    clients = [
        AIOKafkaProducer(**client_options(settings)),
        AIOKafkaConsumer(**client_options(settings)),
        AIOKafkaAdminClient(**client_options(settings)),
    ]
    for client in clients:
        inner = getattr(client, "_client", None) or client.client  # type: ignore[union-attr]
        assert inner._security_protocol == protocol
        assert_no_secret(repr(client), repr(vars(inner)))
    await clients[0].stop()
    await clients[1].stop()
    await clients[2].close()


def test_settings_from_the_environment_reach_the_clients(pki: dict[str, Path]) -> None:
    env = {
        "SESSIONIZER_BROKER_URL": "kafka://b-1.example:9096,b-2.example:9096",
        "SESSIONIZER_SECURITY_PROTOCOL": "sasl_ssl",
        "SESSIONIZER_SASL_MECHANISM": "scram-sha-512",
        "SESSIONIZER_SASL_USERNAME": USER,
        "SESSIONIZER_SASL_PASSWORD": PASSWORD,
        "SESSIONIZER_SSL_CAFILE": str(pki["ca"]),
    }
    opts = client_options(load_settings(env=env))
    assert opts["bootstrap_servers"] == "b-1.example:9096,b-2.example:9096"
    assert opts["security_protocol"] == "SASL_SSL"
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["ssl_context"].get_ca_certs()[0]["subject"] == ((("commonName", "test ca"),),)


# --------------------------------------------------------------------------- TLS context


def test_ssl_context_verifies_with_the_system_cas_by_default() -> None:
    ctx = ssl_context(_sec("SSL"))
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ssl_context(_sec("PLAINTEXT")) is None
    assert ssl_context(_sec("SASL_PLAINTEXT", "PLAIN")) is None


def test_ssl_context_with_ca_and_client_certificate(pki: dict[str, Path]) -> None:
    sec = _sec("SSL", ssl_cafile=pki["ca"], ssl_certfile=pki["cert"], ssl_keyfile=pki["key"])
    ctx = ssl_context(sec)
    assert ctx is not None
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "test ca"),),)]


@pytest.mark.parametrize(
    ("files", "setting", "problem"),
    [
        ({"ssl_cafile": "key"}, "ssl_cafile", "cannot load CA certificates from"),
        (
            {"ssl_cafile": "ca", "ssl_certfile": "cert", "ssl_keyfile": "other_key"},
            "ssl_certfile",
            "cannot load the client certificate",
        ),
        ({"ssl_certfile": "cert", "ssl_keyfile": "enc_key"}, "ssl_keyfile", "is encrypted"),
    ],
)
def test_bad_tls_files_are_one_clear_error(
    pki: dict[str, Path], files: dict[str, str], setting: str, problem: str
) -> None:
    sec = _sec(
        "SASL_SSL", "SCRAM-SHA-256", **{k: pki[v] for k, v in files.items()}
    )  # a password in play
    for build in (ssl_context, aiokafka_options, faust_credentials):
        with pytest.raises(ConfigError) as info:
            build(sec)
        assert info.value.setting == setting
        assert problem in info.value.problem
        assert "\n" not in str(info.value)
        assert_no_secret(str(info.value), repr(info.value))


# --------------------------------------------------------------------------- secrets


def test_masked_password_hides_in_reprs_only() -> None:
    masked = MaskedStr(PASSWORD)
    assert masked == PASSWORD and masked.encode() == PASSWORD.encode()
    assert repr(masked) == "'***'"
    assert_no_secret(repr({"sasl_plain_password": masked}), f"{masked!r}")


@pytest.mark.parametrize("protocol", SASL_PROTOCOLS)
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_password_is_in_no_repr_or_str(protocol: str, mechanism: str) -> None:
    sec = _sec(protocol, mechanism)
    settings = Settings(security=sec)
    opts = client_options(settings)
    creds = faust_credentials(sec)
    assert_no_secret(
        repr(sec),
        str(sec),
        repr(settings),
        repr(opts),
        str(opts),
        repr(creds),
        str(creds),
        repr(vars(creds)),
    )


def test_missing_password_error_does_not_need_it() -> None:
    sec = Security(protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username=USER)
    with pytest.raises(ConfigError, match="sasl_password"):
        aiokafka_options(sec)


def test_logs_never_carry_the_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    redact_logs(PASSWORD)
    log = logging.getLogger("sessionizer.test")
    log.info("as text %s", PASSWORD)
    log.info("as repr %r", PASSWORD)
    log.info("as bytes %r", PASSWORD.encode())
    log.info(f"in the message itself: {PASSWORD}")
    # aiokafka.conn at DEBUG: a PLAIN SaslAuthenticate request carries the password.
    request = SaslAuthenticateRequest_v1(f"\0{USER}\0{PASSWORD}".encode())
    logging.getLogger("aiokafka.conn").debug("Request to %s:%d %d: %s", "h", 1, 3, request)
    try:
        raise RuntimeError(f"boom {PASSWORD}")
    except RuntimeError as err:
        logging.getLogger("faust").warning("failed: %s", err)
    assert len(caplog.records) == 6
    assert_no_secret(caplog.text, *(r.getMessage() for r in caplog.records))
    assert "as text ***" in caplog.text and "as repr '***'" in caplog.text
    assert "Request to h:1 3: SaslAuthenticateRequest_v1(***)" in caplog.text
    assert "failed: boom ***" in caplog.text
    # Everything else stays as it was.
    log.info("plain %s and %d", "text", 7)
    assert caplog.records[-1].getMessage() == "plain text and 7"


# --------------------------------------------------------------------------- web token

TOKEN = "tok-3f9c1a7e5b2d4f60"
CHALLENGE = 'Bearer realm="sessionizer"'


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("192.168.1.10", False),
        ("worker-1.internal", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
@pytest.mark.parametrize("header", [None, "", "Bearer whatever", "Basic dXNlcjpwYXNz"])
def test_without_a_token_loopback_is_open(host: str, header: str | None) -> None:
    assert web_auth(None, host, header) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "worker-1.internal"])
@pytest.mark.parametrize("header", [None, f"Bearer {TOKEN}"])
def test_without_a_token_any_other_bind_is_refused(host: str, header: str | None) -> None:
    denied = web_auth(None, host, header)
    assert denied is not None
    assert denied.challenge == CHALLENGE
    assert f"no web_token is set and web_host {host} is not loopback" in denied.reason
    assert "SESSIONIZER_WEB_TOKEN" in denied.reason


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
@pytest.mark.parametrize(
    "header",
    [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER   {TOKEN}  ", f" Bearer {TOKEN}"],
)
def test_the_right_bearer_token_is_let_in(host: str, header: str) -> None:
    assert web_auth(Secret(TOKEN), host, header) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer   ", TOKEN, f"Basic {TOKEN}", f"Token {TOKEN}"]
)
def test_a_missing_token_is_refused_even_on_loopback(host: str, header: str | None) -> None:
    denied = web_auth(Secret(TOKEN), host, header)
    assert denied is not None
    assert denied.reason == "missing bearer token: send Authorization: Bearer <web_token>"
    assert denied.challenge == CHALLENGE


@pytest.mark.parametrize(
    "presented",
    [
        "wrong",
        TOKEN[:-1],  # a prefix
        TOKEN + "x",
        TOKEN.upper(),
        f"{TOKEN} {TOKEN}",
        "t\u00f6ken-\udcff-\U0001f600",  # not ASCII, not even valid UTF-8: no exception
    ],
)
def test_a_wrong_token_is_refused(presented: str) -> None:
    denied = web_auth(Secret(TOKEN), "0.0.0.0", f"Bearer {presented}")
    assert denied is not None
    assert denied.reason == "invalid bearer token"
    assert denied.challenge == CHALLENGE + ', error="invalid_token"'


def test_denials_never_show_a_token() -> None:
    cases = [(None, "0.0.0.0", f"Bearer {TOKEN}")]
    cases += [(Secret(TOKEN), "0.0.0.0", h) for h in (None, "Bearer nope-nope-nope", TOKEN)]
    for token, host, header in cases:
        denied = web_auth(token, host, header)
        assert denied is not None
        for text in (denied.reason, denied.challenge, repr(denied)):
            assert TOKEN not in text and "nope-nope-nope" not in text


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = security_module.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(security_module.hmac, "compare_digest", spy)
    assert web_auth(Secret(TOKEN), "0.0.0.0", f"Bearer {TOKEN}") is None
    assert web_auth(Secret(TOKEN), "0.0.0.0", "Bearer x") is not None
    assert len(calls) == 2
    # Fixed-size digests: a wrong length takes as long as a wrong value.
    assert all(len(a) == len(b) == 32 for a, b in calls)


def test_forwarded_requests_carry_the_token_masked() -> None:
    assert bearer_headers(None) == {}
    headers = bearer_headers(Secret(TOKEN))
    assert headers == {"Authorization": f"Bearer {TOKEN}"}
    assert TOKEN not in repr(headers)
    assert web_auth(Secret(TOKEN), "0.0.0.0", headers["Authorization"]) is None


def test_logs_never_carry_the_web_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    redact_logs(TOKEN)  # what the worker's web views do at start-up
    logging.getLogger("aiohttp.client").debug("GET with %s", bearer_headers(Secret(TOKEN)))
    logging.getLogger("sessionizer").info("header Bearer %s", TOKEN)
    assert TOKEN not in caplog.text
    assert "header Bearer ***" in caplog.text


@pytest.fixture
def restore_gc() -> Iterator[None]:
    # build_app tunes the collector for a worker process; undo it for the test run.
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [("SSL", None), ("SASL_PLAINTEXT", "PLAIN"), ("SASL_SSL", "SCRAM-SHA-512")],
)
def test_the_worker_app_uses_the_credentials_and_logs_no_password(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    restore_gc: None,
    protocol: str,
    mechanism: str | None,
) -> None:
    from sessionizer.stream.worker import build_app

    caplog.set_level(logging.DEBUG)
    sec = _sec(protocol, mechanism)
    app = build_app(Settings(security=sec, data_dir=tmp_path), web=False)
    creds = app.conf.broker_credentials
    assert creds is not None, "build_app does not pass broker_credentials=faust_credentials(...)"
    assert creds.protocol is AuthProtocol(protocol)
    # Faust's consumer, producer and topic admin all take this mapping.
    auth = credentials_to_aiokafka_auth(creds, app.conf.ssl_context)
    assert _comparable(auth) == _comparable(aiokafka_options(sec))
    assert_no_secret(
        caplog.text,
        repr(app),
        repr(app.conf),
        repr(creds),
        str(creds),
        repr(vars(creds)),
    )
