"""Fixtures shared by the unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a client certificate and key, and the same key encrypted (openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line tool is needed to make test certificates")
    d = tmp_path_factory.mktemp("pki")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=test ca")  # fmt: skip
    openssl("req", "-x509", *ec, "-keyout", "client.key", "-out", "client.pem", "-days", "2",
            "-subj", "/CN=test client")  # fmt: skip
    openssl("pkey", "-in", "client.key", "-aes256", "-passout", "pass:pw", "-out", "enc.key")
    return {
        "ca": d / "ca.pem",
        "cert": d / "client.pem",  # self-signed: also a CA file of its own
        "key": d / "client.key",
        "other_key": d / "ca.key",  # a key that does not match client.pem
        "enc_key": d / "enc.key",
    }
