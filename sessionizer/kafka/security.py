"""Connection security: one TLS context and one set of SASL credentials for every Kafka client.

``Settings.security`` becomes the keyword arguments of the plain aiokafka
clients (``aiokafka_options``, used by ``kafka.client_options``) and the
``broker_credentials`` of the Faust app (``stream.compat.credentials``). Both build
their TLS context with ``ssl_context``, so the worker, its control reader and
the CLI tools connect the same way.

The SASL password leaves its ``Secret`` only here, as a ``MaskedStr`` (a str
whose repr is ``'***'``) for the clients that need the text. Building
credentials also registers the password with ``redact_logs``: log records of
any logger have it replaced by ``***``, and aiokafka's DEBUG dump of SASL
requests (which carries a PLAIN password in clear) is dropped. See
docs/security.md.

``web_auth`` decides who may read ``/sessions`` (user data) on the worker's
web server: with a ``web_token``, only requests that present it as a bearer
token; without one, anyone, but only while the server binds to loopback.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import ssl
import threading
from dataclasses import dataclass
from typing import Any

from ..core.config import ConfigError
from ..settings import Secret, Security

__all__ = [
    "MaskedStr",
    "WebDenial",
    "aiokafka_options",
    "bearer_headers",
    "is_loopback",
    "redact_logs",
    "sasl_password",
    "ssl_context",
    "web_auth",
]

REDACTED = "***"


class MaskedStr(str):
    """The password text as handed to aiokafka and Faust: its repr hides it.

    Dumps of the option dicts, of Faust's credentials or of a client's
    ``__dict__`` show ``'***'``; the clients still read the text itself.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(REDACTED)


def sasl_password(security: Security) -> MaskedStr:
    if security.sasl_password is None:  # settings reject this; kept for hand-built values
        raise ConfigError(
            "sasl_password", f"required when security_protocol is {security.protocol}"
        )
    value = security.sasl_password.reveal()
    redact_logs(value)
    return MaskedStr(value)


def _encrypted_key() -> str:
    # Called by OpenSSL only for an encrypted key; without it OpenSSL would prompt on a tty.
    raise ConfigError("ssl_keyfile", "the private key is encrypted; give an unencrypted PEM key")


def ssl_context(security: Security) -> ssl.SSLContext | None:
    """The client TLS context for SSL and SASL_SSL, else None.

    Verifies the broker's certificate and host name against ``ssl_cafile``
    (default: the system CAs); presents ``ssl_certfile``/``ssl_keyfile`` when
    set (mutual TLS). TLS 1.2 or later.
    """
    if not security.uses_ssl:
        return None
    try:
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=str(security.ssl_cafile) if security.ssl_cafile is not None else None,
        )
    except (ssl.SSLError, OSError) as err:
        raise ConfigError(
            "ssl_cafile", f"cannot load CA certificates from {security.ssl_cafile}: {err}"
        ) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if security.ssl_certfile is not None:
        try:
            ctx.load_cert_chain(
                str(security.ssl_certfile),
                str(security.ssl_keyfile) if security.ssl_keyfile is not None else None,
                password=_encrypted_key,
            )
        except (ssl.SSLError, OSError) as err:
            keyfile = security.ssl_keyfile or security.ssl_certfile
            raise ConfigError(
                "ssl_certfile",
                f"cannot load the client certificate {security.ssl_certfile}"
                f" with the key {keyfile}: {err}",
            ) from None
    return ctx


def aiokafka_options(security: Security) -> dict[str, Any]:
    """Security keyword arguments for aiokafka clients; empty for PLAINTEXT."""
    if security.protocol == "PLAINTEXT":
        return {}
    opts: dict[str, Any] = {"security_protocol": security.protocol}
    if security.uses_ssl:
        opts["ssl_context"] = ssl_context(security)
    if security.uses_sasl:
        opts["sasl_mechanism"] = security.sasl_mechanism
        opts["sasl_plain_username"] = security.sasl_username
        opts["sasl_plain_password"] = sasl_password(security)
    return opts


# --------------------------------------------------------------------------- web

WEB_REALM = "sessionizer"


@dataclass(frozen=True, slots=True)
class WebDenial:
    """Why a request is refused (the 401 body) and its ``WWW-Authenticate`` challenge."""

    reason: str
    challenge: str


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server unreachable from other machines."""
    host = host.strip().lower().removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # another host name: it may resolve to anything
        return False


def web_auth(token: Secret | None, web_host: str, authorization: str | None) -> WebDenial | None:
    """None when a ``/sessions`` request may be answered, else why not.

    ``authorization`` is the request's ``Authorization`` header. With a token
    set, it must be ``Bearer <token>`` (scheme case-insensitive, RFC 7235);
    the comparison takes the same time whatever the presented value.
    """
    challenge = f'Bearer realm="{WEB_REALM}"'
    if token is None:
        if is_loopback(web_host):
            return None
        return WebDenial(
            f"no web_token is set and web_host {web_host} is not loopback: /sessions is "
            "refused (set SESSIONIZER_WEB_TOKEN, or bind web_host to 127.0.0.1)",
            challenge,
        )
    scheme, _, presented = (authorization or "").strip().partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return WebDenial("missing bearer token: send Authorization: Bearer <web_token>", challenge)
    # Digests first: compare_digest would leak the token's length otherwise.
    want = hashlib.sha256(token.reveal().encode()).digest()
    got = hashlib.sha256(presented.encode("utf-8", "replace")).digest()
    if not hmac.compare_digest(want, got):
        return WebDenial("invalid bearer token", challenge + ', error="invalid_token"')
    return None


def bearer_headers(token: Secret | None) -> dict[str, str]:
    """Headers that authorize a request to another worker: empty without a token."""
    if token is None:
        return {}
    return {"Authorization": MaskedStr(f"Bearer {token.reveal()}")}


# --------------------------------------------------------------------------- logs

_lock = threading.Lock()
_needles: tuple[str, ...] = ()
_installed = False
# Shorter secrets are not replaced by value (it would garble every log line);
# the SASL request dump is dropped whatever the length.
_MIN_REDACTED_LEN = 4


def redact_logs(secret: str) -> None:
    """From now on, log records of every logger carry ``***`` instead of ``secret``.

    Installs (once) a log record factory that also drops the arguments of
    aiokafka's DEBUG lines about SaslAuthenticate requests and responses. Covers
    the text, the escaped str form and the bytes form of the secret.
    """
    global _needles, _installed
    forms = {secret, repr(secret)[1:-1], repr(secret.encode())[2:-1]}
    with _lock:
        _needles = tuple(
            sorted(
                {*_needles, *(f for f in forms if len(f) >= _MIN_REDACTED_LEN)},
                key=len,
                reverse=True,
            )
        )
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _redact(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


def _redact(record: logging.LogRecord) -> None:
    args = record.args
    if isinstance(args, tuple) and any(_is_sasl_struct(a) for a in args):
        record.args = tuple(
            f"{type(a).__name__}({REDACTED})" if _is_sasl_struct(a) else a for a in args
        )
    needles = _needles
    if not needles:
        return
    try:
        message = record.getMessage()
    except Exception:  # a broken format is the handler's to report, as usual
        return
    redacted = message
    for needle in needles:
        redacted = redacted.replace(needle, REDACTED)
    if redacted != message:
        record.msg, record.args = redacted, None


def _is_sasl_struct(value: object) -> bool:
    # aiokafka's SaslAuthenticateRequest_vN / SaslAuthenticateResponse_vN structs.
    return type(value).__name__.startswith("SaslAuthenticate")
