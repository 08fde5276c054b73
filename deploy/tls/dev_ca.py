"""A development CA and certificates for the services' mutual TLS (HYPERLLAMA_TLS_CA/_CERT/_KEY).

    python deploy/tls/dev_ca.py build/dev-ca          (what `make dev-ca` runs)

writes into the folder:
  ca.crt, ca.key          the CA every service trusts (HYPERLLAMA_TLS_CA=ca.crt)
  server.crt, server.key  for every service (HYPERLLAMA_TLS_CERT, HYPERLLAMA_TLS_KEY): a service both
                          serves and calls, so it is good for both ends; it names loopback, the compose
                          services, and the fixed name ``hyperllama`` (HYPERLLAMA_TLS_SERVER_NAME) that
                          clients check instead of an address no certificate can name (a pod's IP)
  client.crt, client.key  a client-only certificate, for tools and tests that only call

Certificates that exist are kept, so the command can run again; delete the folder for new ones. For
development and tests only: production certificates come from your own CA (cert-manager, Vault ...).
It uses the openssl command.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DAYS = 825
# The compose services that serve or call gRPC, by their service names (compose's DNS).
COMPOSE_NAMES = ["scheduler", "gateway", "worker-llamacpp", "worker-vllm", "worker-max"]
SERVER_NAMES = ["localhost", "hyperllama", *COMPOSE_NAMES]
SERVER_IPS = ["127.0.0.1", "::1"]


def _openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def _key_and_request(key: Path, csr: Path, subject: str) -> None:
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", subject)  # fmt: skip
    key.chmod(0o600)


def _sign(out: Path, csr: Path, extensions: list[str], work: Path) -> None:
    ext = work / f"{out.stem}.ext"
    ext.write_text("\n".join(extensions) + "\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(out.parent / "ca.crt"), "-CAkey",
             str(out.parent / "ca.key"), "-set_serial", f"0x{secrets.token_hex(16)}", "-days", str(DAYS),
             "-sha256", "-extfile", str(ext), "-out", str(out))  # fmt: skip


def make_ca(out: Path) -> None:
    if (out / "ca.crt").exists() and (out / "ca.key").exists():
        return
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(out / "ca.key"), "-out", str(out / "ca.crt"), "-days", str(DAYS), "-sha256",
             "-subj", "/CN=HyperLlama development CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    (out / "ca.key").chmod(0o600)


def make_leaf(out: Path, name: str, usages: str, alt_names: list[str]) -> None:
    if (out / f"{name}.crt").exists() and (out / f"{name}.key").exists():
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        csr = work / f"{name}.csr"
        _key_and_request(out / f"{name}.key", csr, f"/CN=hyperllama-{name}")
        extensions = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage={usages}",
        ]
        if alt_names:
            extensions.append("subjectAltName=" + ",".join(alt_names))
        _sign(out / f"{name}.crt", csr, extensions, work)


def make_dev_ca(out: Path) -> Path:
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl command is needed (Debian: apt-get install openssl)")
    out.mkdir(parents=True, exist_ok=True)
    make_ca(out)
    alt = [f"DNS:{n}" for n in SERVER_NAMES] + [f"IP:{ip}" for ip in SERVER_IPS]
    make_leaf(out, "server", "serverAuth,clientAuth", alt)
    make_leaf(out, "client", "clientAuth", [])
    return out


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "build/dev-ca")
    try:
        make_dev_ca(out)
    except RuntimeError as err:
        print(f"dev CA: {err}", file=sys.stderr)
        return 1
    print(f"Development CA and certificates in {out}{os.sep}: ca.crt, server.crt/.key, client.crt/.key")
    return 0


if __name__ == "__main__":
    sys.exit(main())
