"""deploy/: the Kubernetes manifests validated offline against the API schemas that
kubernetes-validate bundles (no cluster, no network), and kept consistent with the plugin: driver
name, command-line flags, volume attributes, memory limit versus cache budget."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

from amlfs.csi import volume  # noqa: E402
from amlfs.csi.server import DRIVER_NAME  # noqa: E402
from amlfs.units import parse_size  # noqa: E402

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S_VERSION = "1.30.0"
MANIFESTS = sorted(
    p
    for p in [*DEPLOY.glob("kubernetes/*.yaml"), *DEPLOY.glob("examples/*.yaml")]
    if p.name != "kustomization.yaml"
)


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_docs() -> list[dict]:
    return [d for p in MANIFESTS for d in docs(p)]


def by_kind(kind: str) -> list[dict]:
    return [d for d in all_docs() if d["kind"] == kind]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_manifest_validates_strictly(path):
    for doc in docs(path):
        # strict: unknown fields are errors too
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest():
    k = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    listed = set(k["resources"])
    present = {p.name for p in (DEPLOY / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    images = {i["name"] for i in k["images"]}
    used = {c["image"] for ds in by_kind("DaemonSet") for c in _containers(ds)}
    assert images <= used


def _containers(ds: dict) -> list[dict]:
    return ds["spec"]["template"]["spec"]["containers"]


def _plugin(ds: dict) -> dict:
    return next(c for c in _containers(ds) if c["name"] == "amlfs")


def _flags(args: list[str]) -> dict[str, str]:
    return dict(a.lstrip("-").split("=", 1) for a in args if a.startswith("--"))


def test_driver_name_and_sidecars_agree():
    (driver,) = by_kind("CSIDriver")
    assert driver["metadata"]["name"] == DRIVER_NAME
    assert driver["spec"]["attachRequired"] is False
    assert set(driver["spec"]["volumeLifecycleModes"]) == {"Persistent", "Ephemeral"}
    assert {t["audience"] for t in driver["spec"]["tokenRequests"]} == {volume.TOKEN_AUDIENCE}
    (ds,) = by_kind("DaemonSet")
    names = {c["name"] for c in _containers(ds)}
    assert names == {"amlfs", "node-driver-registrar", "liveness-probe"}
    registrar = next(c for c in _containers(ds) if c["name"] == "node-driver-registrar")
    reg_path = _flags(registrar["args"])["kubelet-registration-path"]
    assert f"/plugins/{DRIVER_NAME}/csi.sock" in reg_path
    socket_dir = next(
        v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "socket-dir"
    )
    assert reg_path.startswith(socket_dir["hostPath"]["path"])
    plugin = _plugin(ds)
    probe = next(c for c in _containers(ds) if c["name"] == "liveness-probe")
    port = int(_flags(probe["args"])["health-port"])
    assert plugin["ports"][0]["containerPort"] == port
    assert plugin["livenessProbe"]["httpGet"]["port"] == plugin["ports"][0]["name"]
    pods = next(m for m in plugin["volumeMounts"] if m["name"] == "pods-dir")
    assert pods["mountPropagation"] == "Bidirectional" and plugin["securityContext"]["privileged"]


def test_plugin_args_are_accepted_by_amlfs_csi():
    """Every flag the DaemonSet passes is one `amlfs csi` (or `amlfs`) knows."""
    (ds,) = by_kind("DaemonSet")
    args = _plugin(ds)["args"]
    i = args.index("csi")
    top = subprocess.run(
        [sys.executable, "-m", "amlfs", "--help"], capture_output=True, text=True, check=True
    ).stdout
    sub = subprocess.run(
        [sys.executable, "-m", "amlfs", "csi", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in _flags(args[:i]):
        assert f"--{flag}" in top
    for flag in _flags(args[i + 1 :]):
        assert f"--{flag}" in sub


def test_disk_cache_lives_in_a_host_directory():
    """The daemons' default cache dir ($XDG_CACHE_HOME/amlfs) is a hostPath mount: it survives the
    pod and does not fill the container's writable layer."""
    (ds,) = by_kind("DaemonSet")
    plugin = _plugin(ds)
    env = {e["name"]: e.get("value") for e in plugin["env"]}
    cache_dir = f"{env['XDG_CACHE_HOME']}/amlfs"
    (mount,) = [m for m in plugin["volumeMounts"] if m["mountPath"] == cache_dir]
    (vol,) = [v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert vol["hostPath"]["path"] == cache_dir


def test_memory_limit_covers_the_cache_budget():
    """limit >= cache budget + per-daemon footprint x max volumes + the plugin (deploy/README.md)."""
    (ds,) = by_kind("DaemonSet")
    plugin = _plugin(ds)
    flags = _flags(plugin["args"])
    budget = parse_size(flags["cache-budget"], "budget")
    daemons = int(flags["max-volumes"])
    limit = parse_size(plugin["resources"]["limits"]["memory"], "limit")
    assert limit >= budget + daemons * (200 << 20) + (200 << 20)
    assert parse_size(plugin["resources"]["requests"]["memory"], "request") <= limit


def test_example_volumes_use_known_attributes():
    found = 0
    for doc in all_docs():
        csi = None
        if doc["kind"] == "PersistentVolume":
            csi = doc["spec"]["csi"]
            volume.parse_mount_flags(doc["spec"].get("mountOptions", []))
        elif doc["kind"] == "Pod":
            csi = next(v["csi"] for v in doc["spec"]["volumes"] if "csi" in v)
        if csi is None:
            continue
        found += 1
        assert csi["driver"] == DRIVER_NAME
        unknown = set(csi["volumeAttributes"]) - volume._ATTRIBUTES
        assert not unknown
    assert found == 3


def test_dockerfile_copies_what_exists():
    text = (DEPLOY / "Dockerfile").read_text()
    root = DEPLOY.parent
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for name in src.split():
            assert (root / name).exists(), name
    assert "amlfs[csi]" in text and "fuse3" in text
