"""TLS, mutual TLS and bearer tokens against a real server, with certificates made here.

Each refusal is checked for what it is: a client that does not trust the server's CA, a
client without a certificate (mTLS), a client certificate from another CA, no token and a
wrong token (UNAUTHENTICATED), while the health service answers probes without a token."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys

import numpy as np
import pytest

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

from poolclient import TLS, PoolClient, PoolError  # noqa: E402
from serverproc import ServerProc  # noqa: E402

import grpc  # noqa: E402

X = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
TOKEN = "s3cret-token-for-tests"


# -- a throwaway PKI ------------------------------------------------------------------------------
def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca, cn: str, *, server: bool):
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _pem_key(key), cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, other_ca = make_ca("poolserve test CA"), make_ca("some other CA")
    files = {}

    def put(name, data):
        (d / name).write_bytes(data)
        files[name] = str(d / name)

    put("ca.pem", ca[1].public_bytes(serialization.Encoding.PEM))
    put("other-ca.pem", other_ca[1].public_bytes(serialization.Encoding.PEM))
    for name, (key, cert) in {"server": issue(ca, "localhost", server=True),
                              "client": issue(ca, "client-1", server=False),
                              "rogue": issue(other_ca, "rogue-client", server=False)}.items():
        put(f"{name}.key", key)
        put(f"{name}.pem", cert)
    put("tokens", f"# one token a line\n\nold-token-being-rotated-out\n{TOKEN}\n".encode())
    return files


def _pool(target, **kw):
    with PoolClient(target, timeout=10, retries=0, **kw) as c:
        return c.max_pool(X, 2)


def _health(target, *args, env=None):
    return subprocess.run([sys.executable, "-m", "poolserve.app", "health", "--target", target, *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


# -- TLS ------------------------------------------------------------------------------------------
def test_tls(pki, tmp_path):
    with ServerProc("--tls-cert", pki["server.pem"], "--tls-key", pki["server.key"], log_dir=tmp_path) as s:
        y = _pool(s.target, tls=TLS(ca=pki["ca.pem"]))
        assert y.shape == (2, 3, 2, 2) and y[0, 0, 0, 0] == X[0, 0, :2, :2].max()
        assert _health(s.target, "--tls-ca", pki["ca.pem"]).returncode == 0

        # a client that trusts another CA refuses the server's certificate
        with pytest.raises(PoolError) as e:
            _pool(s.target, tls=TLS(ca=pki["other-ca.pem"]))
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
        # a plaintext client cannot talk to a TLS port
        with pytest.raises(PoolError) as e:
            _pool(s.target)
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
        assert _health(s.target).returncode == 1
        assert s.alive()


def test_mutual_tls(pki, tmp_path):
    flags = ("--tls-cert", pki["server.pem"], "--tls-key", pki["server.key"], "--tls-client-ca", pki["ca.pem"])
    with ServerProc(*flags, log_dir=tmp_path) as s:
        good = TLS(ca=pki["ca.pem"], cert=pki["client.pem"], key=pki["client.key"])
        assert _pool(s.target, tls=good).shape == (2, 3, 2, 2)

        # no client certificate: the handshake fails, no call reaches a handler
        with pytest.raises(PoolError) as e:
            _pool(s.target, tls=TLS(ca=pki["ca.pem"]))
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
        # a certificate from a CA the server does not trust
        with pytest.raises(PoolError) as e:
            _pool(s.target, tls=TLS(ca=pki["ca.pem"], cert=pki["rogue.pem"], key=pki["rogue.key"]))
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
        # the health command: with a client certificate it gets through, without it does not
        assert _health(s.target, "--tls-ca", pki["ca.pem"], "--tls-cert", pki["client.pem"],
                       "--tls-key", pki["client.key"]).returncode == 0
        assert _health(s.target, "--tls-ca", pki["ca.pem"]).returncode == 1
        # the same from the environment: how a container's fixed HEALTHCHECK is pointed at TLS
        assert _health(s.target, env={"POOLSERVE_HEALTH_TLS_CA": pki["ca.pem"],
                                      "POOLSERVE_HEALTH_TLS_CERT": pki["client.pem"],
                                      "POOLSERVE_HEALTH_TLS_KEY": pki["client.key"],
                                      "POOLSERVE_HEALTH_SERVER_NAME": "localhost"}).returncode == 0
        assert s.alive()


# -- bearer tokens --------------------------------------------------------------------------------
def test_bearer_token(pki, tmp_path):
    with ServerProc("--auth-token-file", pki["tokens"], log_dir=tmp_path) as s:
        assert _pool(s.target, token=TOKEN).shape == (2, 3, 2, 2)
        assert _pool(s.target, token="old-token-being-rotated-out").shape == (2, 3, 2, 2)  # rotation

        for token in (None, "wrong", TOKEN[:-1], TOKEN + "x", TOKEN.upper()):
            with pytest.raises(PoolError) as e:
                _pool(s.target, token=token)
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED, token
        # a header that is not a bearer token, and the token without its scheme
        for header in (f"Basic {TOKEN}", TOKEN, "Bearer"):
            with pytest.raises(PoolError) as e:
                _pool(s.target, metadata=[("authorization", header)])
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED, header
        # streaming calls are guarded as well
        with PoolClient(s.target, timeout=10, retries=0) as c, pytest.raises(PoolError) as e:
            list(c.pool_many([X, X], mode="max", kernel_size=2))
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
        with PoolClient(s.target, timeout=10, retries=0, token=TOKEN) as c:
            assert len(list(c.pool_many([X, X], mode="max", kernel_size=2))) == 2

        # the shell client reads its token from a file (never a command-line argument)
        np.save(tmp_path / "x.npy", X)
        (tmp_path / "token").write_text(TOKEN + "\n")
        cli = [sys.executable, "-m", "poolclient.cli", "pool", str(tmp_path / "x.npy"), "-k", "2",
               "--target", s.target, "-o", str(tmp_path / "y.npy")]
        assert subprocess.run(cli, capture_output=True, timeout=60).returncode != 0
        out = subprocess.run(cli + ["--token-file", str(tmp_path / "token")], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert np.load(tmp_path / "y.npy").shape == (2, 3, 2, 2)

        # health stays open for probes, without a token
        assert _health(s.target).returncode == 0
        assert TOKEN not in s.log()
        assert s.alive()

        # the Open Inference Protocol is guarded too; NVIDIA's client sends the header per call
        tc = pytest.importorskip("tritonclient.grpc")
        triton = tc.InferenceServerClient(s.target)
        assert triton.is_server_live(headers={"authorization": f"Bearer {TOKEN}"})
        with pytest.raises(Exception, match="UNAUTHENTICATED|bearer token"):
            triton.is_server_live()
        triton.close()


def test_token_and_mutual_tls_together(pki, tmp_path):
    flags = ("--tls-cert", pki["server.pem"], "--tls-key", pki["server.key"], "--tls-client-ca", pki["ca.pem"],
             "--auth-token-file", pki["tokens"])
    good = TLS(ca=pki["ca.pem"], cert=pki["client.pem"], key=pki["client.key"])
    with ServerProc(*flags, log_dir=tmp_path) as s:
        assert _pool(s.target, tls=good, token=TOKEN).shape == (2, 3, 2, 2)
        with pytest.raises(PoolError) as e:
            _pool(s.target, tls=good, token="wrong")
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("flags, message", [
    (("--auth-token-file", "/nonexistent/tokens"), "--auth-token-file"),
    (("--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"), "--tls-key"),
    (("--tls-client-ca", "/nonexistent/ca.pem"), "--tls-client-ca"),
])
def test_bad_security_flags_stop_start_up(flags, message, tmp_path):
    # a server that cannot enforce what it was asked to must not start without it
    out = subprocess.run([sys.executable, "-m", "poolserve.app", "serve", "--port", "0", "--metrics-port", "0",
                          *flags], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr


def test_empty_token_file_is_refused(tmp_path):
    empty = tmp_path / "tokens"
    empty.write_text("# nothing but a comment\n\n")
    out = subprocess.run([sys.executable, "-m", "poolserve.app", "serve", "--port", "0", "--metrics-port", "0",
                          "--auth-token-file", str(empty)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "holds no token" in out.stderr
