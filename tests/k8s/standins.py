"""What a real cluster has and the test control plane lacks, played by the tests: a kubelet that serves
container logs, and an "operator" that turns a job into a trainer pod and moves the job's status along.

- :class:`FakeKubelet`: an HTTPS server on 127.0.0.1 registered as a Node; the API server proxies
  ``pods/log`` to it exactly as to a kubelet (``/containerLogs/<ns>/<pod>/<container>``), so the launcher's
  log path (RBAC on pods/log, the streaming read, redaction) runs through the real API server.
- :class:`FakeOperator`: a thread that waits for the job, creates its trainer pod from the job's own pod
  template (so the real API server validates and admits it as a Pod), then patches the pod's and the job's
  status through the status subresources: ``succeed``, ``fail``, or ``stuck`` (created, never scheduled).
"""

from __future__ import annotations

import datetime
import http.server
import ssl
import threading
import time
from pathlib import Path
from typing import Any


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def self_signed_cert(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kubelet")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "kubelet.crt", folder / "kubelet.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class FakeKubelet:
    """Serves ``/containerLogs/<ns>/<pod>/<container>`` from :attr:`logs`; records every request path."""

    def __init__(self, folder: Path, line_delay_s: float = 0.05):
        self.logs: dict[tuple[str, str, str], list[str]] = {}
        self.requests: list[str] = []
        kubelet = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                kubelet.requests.append(self.path)
                parts = self.path.split("?")[0].strip("/").split("/")
                lines = kubelet.logs.get(tuple(parts[1:4])) if len(parts) == 4 and parts[0] == "containerLogs" else None
                if lines is None:
                    self.send_error(404, "no such container")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                for line in lines:  # streamed: the launcher must read while the "container" writes
                    self.wfile.write(line.encode() + b"\n")
                    self.wfile.flush()
                    time.sleep(line_delay_s)

            def log_message(self, *args):  # keep pytest output clean
                pass

        cert, key = self_signed_cert(folder)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def node(self, name: str) -> dict[str, Any]:
        """The Node object pointing the API server at this kubelet (nodes may set status on create)."""
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                           "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
                           "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                           "message": "fake kubelet", "lastHeartbeatTime": _now(),
                                           "lastTransitionTime": _now()}]}}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


KINDS = {  # group, version, plural, trainer container, (status condition types for running/success/failure)
    "PyTorchJob": ("kubeflow.org", "v1", "pytorchjobs", "pytorch", ("Running", "Succeeded", "Failed")),
    "TrainJob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "node", (None, "Complete", "Failed")),
}


class FakeOperator(threading.Thread):
    """Plays the Training Operator / Trainer for one job: ``script`` is ``succeed``, ``fail`` or ``stuck``."""

    def __init__(self, api_client: Any, kind: str, namespace: str, name: str, script: str, node: str,
                 kubelet: FakeKubelet | None = None, log_lines: list[str] | None = None, run_s: float = 1.0,
                 failure_message: str = "pytorch exited with code 1", after_uid: str = ""):
        super().__init__(daemon=True, name=f"operator-{name}")
        from kubernetes import client

        self.custom, self.core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
        self.kind, self.namespace, self.name, self.script, self.node = kind, namespace, name, script, node
        self.kubelet, self.log_lines, self.run_s, self.failure_message = kubelet, log_lines or [], run_s, failure_message
        self.group, self.version, self.plural, self.container, self.conditions = KINDS[kind]
        self.pod_name = f"{name}-master-0" if kind == "PyTorchJob" else f"{name}-node-0-0"
        self.after_uid = after_uid  # wait for a job other than this one (a replaced job)
        self.error: BaseException | None = None
        self.pod: dict[str, Any] | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test through .error
            self.error = exc

    def _run(self) -> None:
        job = self._wait_for_job()
        self._condition("Created", "JobCreated", f"{self.kind} {self.name} is created.")
        if self.script == "stuck":
            return
        self.pod = self._create_pod(job)
        if self.kubelet is not None:
            self.kubelet.logs[(self.namespace, self.pod_name, self.container)] = self.log_lines
        self._pod_phase("Running")
        if self.conditions[0]:
            self._condition(self.conditions[0], "JobRunning", f"{self.kind} {self.name} is running.")
        time.sleep(self.run_s)
        ok = self.script == "succeed"
        self._pod_phase("Succeeded" if ok else "Failed")
        if ok:
            self._condition(self.conditions[1], "JobSucceeded", f"{self.kind} {self.name} is successfully completed.")
        else:
            self._condition(self.conditions[2], "JobFailed", self.failure_message)

    def _wait_for_job(self, timeout_s: float = 60) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                job = self.custom.get_namespaced_custom_object(self.group, self.version, self.namespace,
                                                               self.plural, self.name)
                if job["metadata"]["uid"] != self.after_uid:
                    return job
            except ApiException as exc:
                if exc.status != 404:
                    raise
            time.sleep(0.1)
        raise TimeoutError(f"{self.kind} {self.name} never appeared")

    def _condition(self, ctype: str, reason: str, message: str) -> None:
        job = self.custom.get_namespaced_custom_object(self.group, self.version, self.namespace, self.plural, self.name)
        status = job.get("status") or {}
        conds = [c for c in status.get("conditions") or [] if c["type"] != ctype]
        for c in conds:  # a finished job is no longer running, as the operators report it
            if ctype in self.conditions[1:] and c["type"] == self.conditions[0]:
                c["status"] = "False"
        cond = {"type": ctype, "status": "True", "reason": reason, "message": message, "lastTransitionTime": _now()}
        if self.kind == "PyTorchJob":
            cond["lastUpdateTime"] = _now()
            status.setdefault("replicaStatuses", {})
        status["conditions"] = conds + [cond]
        job["status"] = status
        self.custom.replace_namespaced_custom_object_status(self.group, self.version, self.namespace, self.plural,
                                                            self.name, job)

    def _create_pod(self, job: dict[str, Any]) -> dict[str, Any]:
        if self.kind == "PyTorchJob":
            template = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
            labels = {"training.kubeflow.org/job-name": self.name, "training.kubeflow.org/job-role": "master",
                      "training.kubeflow.org/replica-type": "master", "training.kubeflow.org/replica-index": "0"}
            meta, spec = dict(template.get("metadata") or {}), dict(template["spec"])
        else:
            meta, spec = _trainjob_pod(job)
            labels = {"jobset.sigs.k8s.io/jobset-name": self.name, "jobset.sigs.k8s.io/replicatedjob-name": "node",
                      "batch.kubernetes.io/job-completion-index": "0"}
        meta = {**meta, "name": self.pod_name, "labels": {**(meta.get("labels") or {}), **labels}}
        spec.update(nodeName=self.node, automountServiceAccountToken=False, restartPolicy="Never")
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
        return self.core.create_namespaced_pod(self.namespace, pod).to_dict()

    def _pod_phase(self, phase: str) -> None:
        state = ({"running": {"startedAt": _now()}} if phase == "Running"
                 else {"terminated": {"exitCode": 0 if phase == "Succeeded" else 1, "reason": "Completed"
                                      if phase == "Succeeded" else "Error", "finishedAt": _now()}})
        self.core.patch_namespaced_pod_status(self.pod_name, self.namespace, {"status": {
            "phase": phase, "containerStatuses": [{"name": self.container, "ready": phase == "Running",
                                                   "restartCount": 0, "image": "x", "imageID": "", "state": state}]}})


def _trainjob_pod(job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trainer pod Trainer would make: the torch runtime's "node" container with the TrainJob's trainer
    overrides, then the runtime patch's pod-level fields (a stand-in for Trainer's own merge)."""
    trainer = job["spec"]["trainer"]
    container = {"name": "node", "image": trainer["image"], "command": trainer.get("command"),
                 "args": trainer.get("args"), "env": trainer.get("env"), "resources": trainer.get("resourcesPerNode")}
    spec: dict[str, Any] = {"containers": [container]}
    meta: dict[str, Any] = {}
    for patch in job["spec"].get("runtimePatches") or []:
        for rjob in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            if rjob["name"] != "node":
                continue
            tmpl = rjob["template"]["spec"]["template"]
            meta.update(tmpl.get("metadata") or {})
            pspec = dict(tmpl.get("spec") or {})
            for cpatch in pspec.pop("containers", []):
                if cpatch["name"] == "node":
                    container.update({k: v for k, v in cpatch.items() if k != "name"})
            spec.update(pspec)
    spec["containers"] = [{k: v for k, v in container.items() if v is not None}]
    return meta, spec
