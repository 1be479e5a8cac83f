"""An envtest-style Kubernetes control plane for the tests: etcd + kube-apiserver on 127.0.0.1, random ports.

Binaries come from ``$KUBEBUILDER_ASSETS`` (``setup-envtest use -p path``) or from the cache that
``make k8s-testenv`` fills (tests/k8s/build-testenv.sh). The API server authenticates with a static token
(one admin in ``system:masters``) and real service-account tokens (TokenRequest, signed with a key pair made
here), authorizes with RBAC, and runs the default admission plugins; no controllers, no kubelet. Processes are
started with their own PID and stopped by it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

DEFAULT_ASSETS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vlm-platform/k8s-testenv/v1.20.2"
BINARIES = ("kube-apiserver", "etcd", "kubectl")


def assets_dir() -> Path:
    """``$KUBEBUILDER_ASSETS`` when set, else ``$VLM_K8S_ASSETS``, else the cache ``make k8s-testenv`` fills."""
    return Path(os.environ.get("KUBEBUILDER_ASSETS") or os.environ.get("VLM_K8S_ASSETS") or DEFAULT_ASSETS)


def missing_binaries(path: Path) -> list[str]:
    return [b for b in BINARIES if not os.access(path / b, os.X_OK)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_version(binary: Path) -> tuple[int, int, str]:
    """(major, minor, gitVersion) of a kube-apiserver binary (``--version`` prints ``Kubernetes v1.20.2``)."""
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"v(\d+)\.(\d+)\.\S*", out)
    if not m:
        raise RuntimeError(f"cannot read the version of {binary}: {out!r}")
    return int(m[1]), int(m[2]), m[0]


def write_key_pair(folder: Path) -> tuple[Path, Path]:
    """An RSA key pair for signing service-account tokens."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = folder / "sa.key", folder / "sa.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@dataclasses.dataclass
class TestEnv:
    """A running control plane; ``stop()`` ends both processes by PID."""

    url: str
    token: str
    kubeconfig: Path
    version: str
    minor: int
    assets: Path
    workdir: Path
    start_s: float
    procs: list[subprocess.Popen] = dataclasses.field(default_factory=list)

    def api_client(self, token: str | None = None):
        """A kubernetes ``ApiClient`` for the admin, or for whoever ``token`` belongs to."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        cfg.verify_ssl = False  # the server's certificate is self-signed, made at start
        cfg.api_key = {"authorization": f"Bearer {token or self.token}"}
        return client.ApiClient(cfg)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, token: str | None = None
                ) -> subprocess.CompletedProcess:
        cmd = [str(self.assets / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        if token:
            cmd.insert(2, f"--token={token}")
        res = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=120)
        if check and res.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def stop(self) -> None:
        for proc in reversed(self.procs):  # apiserver first, then etcd
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self.procs.clear()


def start(workdir: Path, ready_timeout_s: float = 180) -> TestEnv:
    """Start etcd and kube-apiserver under ``workdir`` and wait until the API server is ready."""
    assets = assets_dir()
    missing = missing_binaries(assets)
    if missing:
        raise RuntimeError(f"no {', '.join(missing)} in {assets}: run `make k8s-testenv` (builds them offline, "
                           "once per machine) or point KUBEBUILDER_ASSETS at envtest binaries")
    major, minor, version = server_version(assets / "kube-apiserver")
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    env = TestEnv(url="", token=secrets.token_hex(16), kubeconfig=workdir / "kubeconfig", version=version,
                  minor=minor, assets=assets, workdir=workdir, start_s=0.0)
    try:
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        env.procs.append(_spawn([
            str(assets / "etcd"), f"--data-dir={workdir / 'etcd'}", "--name=default",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}", "--unsafe-no-fsync",
        ], workdir / "etcd.log"))
        (workdir / "tokens.csv").write_text(f"{env.token},admin,admin-uid,system:masters\n")
        sa_key, sa_pub = write_key_pair(workdir)
        issuer = "https://kubernetes.default.svc.cluster.local"
        args = [
            str(assets / "kube-apiserver"), "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}", f"--cert-dir={workdir / 'certs'}", f"--etcd-servers={etcd_url}",
            f"--token-auth-file={workdir / 'tokens.csv'}", "--authorization-mode=RBAC",
            f"--service-account-key-file={sa_pub}", f"--service-account-signing-key-file={sa_key}",
            f"--service-account-issuer={issuer}", f"--api-audiences={issuer}",
            "--service-cluster-ip-range=10.0.0.0/24", "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=false", "--allow-privileged=true",
        ]
        if (major, minor) < (1, 24):
            args.append("--insecure-port=0")  # 1.20 serves plain HTTP on 127.0.0.1:8080 unless told not to
        env.procs.append(_spawn(args, workdir / "apiserver.log"))
        env.url = f"https://127.0.0.1:{api_port}"
        _wait_ready(env, ready_timeout_s)
    except BaseException:
        env.stop()
        raise
    env.start_s = time.monotonic() - t0
    _write_kubeconfig(env)
    return env


def _spawn(cmd: list[str], logfile: Path) -> subprocess.Popen:
    out = logfile.open("wb")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait_ready(env: TestEnv, timeout_s: float) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        for proc, name in zip(env.procs, ("etcd", "apiserver")):
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{_tail(env.workdir / f'{name}.log')}")
        try:
            req = urllib.request.Request(f"{env.url}/readyz", headers={"Authorization": f"Bearer {env.token}"})
            with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = str(exc)
        time.sleep(0.5)
    raise RuntimeError(f"the API server was not ready within {timeout_s:g}s ({last}):\n"
                       f"{_tail(env.workdir / 'apiserver.log')}")


def _tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


def _write_kubeconfig(env: TestEnv) -> None:
    env.kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "testenv",
        "clusters": [{"name": "testenv", "cluster": {"server": env.url, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "admin", "user": {"token": env.token}}],
        "contexts": [{"name": "testenv", "context": {"cluster": "testenv", "user": "admin"}}],
    }))
    env.kubeconfig.chmod(0o600)
