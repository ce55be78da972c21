"""The CSI node plugin, csi-sanity style: `amlfs csi` runs as a real subprocess, the tests talk
gRPC to it over its unix socket, and every publish is a real FUSE mount of an Azurite container.
Teardown unmounts whatever is left under the test's directory."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import yaml

from amlfs.backends import open_backend
from amlfs.csi import csi_pb2 as pb
from amlfs.csi import csi_pb2_grpc as pb_grpc
from amlfs.csi import volume
from amlfs.fs import control

from .azurite import ACCOUNT, KEY

FUSE_OK = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.azurite,
    pytest.mark.skipif(not FUSE_OK, reason="needs /dev/fuse and fusermount3"),
]

MODE = pb.VolumeCapability.AccessMode
READER = MODE.MULTI_NODE_READER_ONLY
BAD_KEY = "QmFkS2V5Tm90UmVhbGx5QUtleUF0QWxsSnVzdFRlc3RpbmdUaGlzQ2FzZQ=="


class Plugin:
    """One `amlfs csi` process at a time on a fixed socket and state directory."""

    def __init__(self, tmp: Path, registry: Path | None = None):
        self.tmp = tmp
        self.socket = tmp / "csi" / "csi.sock"
        self.state = tmp / "state"
        self.registry = registry
        self.proc: subprocess.Popen | None = None
        self.channel: grpc.Channel | None = None
        self.log = tmp / "plugin.log"

    def start(self) -> None:
        argv = [sys.executable, "-m", "amlfs"]
        if self.registry:
            argv += ["--registry", str(self.registry)]
        argv += ["csi", "--endpoint", f"unix://{self.socket}", "--state-dir", str(self.state)]
        argv += ["--node-id", "node-a", "--max-volumes", "7", "--cache-budget", "2G"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=self.tmp)
        self.wait_serving(previous=None)

    def server_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"serving CSI .* \(pid (\d+)\)", self.log_text())]

    def wait_serving(self, previous: int | None, bound: float = 60) -> int:
        """Wait (bounded) until a server other than `previous` has logged that it serves."""
        deadline = time.monotonic() + bound
        while not (pids := self.server_pids()) or pids[-1] == previous:
            assert self.proc.poll() is None, self.log_text()
            assert time.monotonic() < deadline, self.log_text()
            time.sleep(0.05)
        if self.channel is not None:
            self.channel.close()
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.identity = pb_grpc.IdentityStub(self.channel)
        self.node = pb_grpc.NodeStub(self.channel)
        return pids[-1]

    def kill(self) -> None:
        """SIGKILL the supervisor: the plugin gets no chance to clean up; its server dies with
        it (parent-death signal)."""
        assert self.proc is not None
        server = self.server_pids()[-1]
        self.proc.kill()
        self.proc.wait(timeout=10)
        assert wait_gone(server, 30)
        self.channel.close()
        self.channel = None

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def state_dir_of(self, target: Path) -> Path:
        from amlfs.csi.state import StateDir

        return StateDir(str(self.state)).dir_for(str(target))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def blob_files(azurite, container):
    cc = azurite.service().get_container_client(container)
    cc.upload_blob("data/a.txt", b"alpha\n")
    cc.upload_blob("data/sub/b.bin", os.urandom(300_000))
    cc.upload_blob("top.txt", b"top\n")
    return container


@pytest.fixture
def node_registry(tmp_path, azurite, blob_files) -> Path:
    reg = tmp_path / "node-registry.yaml"
    reg.write_text(
        yaml.safe_dump(
            {
                "default_datastore": "training",
                "datastores": [
                    {
                        "name": "training",
                        "type": "azure_blob",
                        "account_name": ACCOUNT,
                        "container_name": blob_files,
                        "account_url": azurite.account_url,
                        "credentials": {"account_key": KEY},
                    }
                ],
            }
        )
    )
    reg.chmod(0o600)
    return reg


@pytest.fixture
def plugin(tmp_path, node_registry):
    p = Plugin(tmp_path, node_registry)
    p.start()
    yield p
    p.stop()
    for m in control.list_mounts():
        if m.mountpoint.startswith(str(tmp_path)):
            control.unmount(m.mountpoint, lazy=True)


def capability(mode=READER, flags=(), block=False) -> pb.VolumeCapability:
    if block:
        return pb.VolumeCapability(
            block=pb.VolumeCapability.BlockVolume(), access_mode=MODE(mode=mode)
        )
    return pb.VolumeCapability(
        mount=pb.VolumeCapability.MountVolume(mount_flags=list(flags)),
        access_mode=MODE(mode=mode),
    )


def inline_context(azurite, container, **extra) -> dict[str, str]:
    return {
        "type": "azure_blob",
        "account_name": ACCOUNT,
        "container_name": container,
        "account_url": azurite.account_url,
        "csi.storage.k8s.io/ephemeral": "true",
        "csi.storage.k8s.io/pod.name": "trainer-0",
        **extra,
    }


def publish(plugin, target, context, secrets=None, cap=None, volume_id="vol-1", readonly=True):
    return plugin.node.NodePublishVolume(
        pb.NodePublishVolumeRequest(
            volume_id=volume_id,
            target_path=str(target),
            volume_capability=cap or capability(),
            readonly=readonly,
            secrets=secrets or {},
            volume_context=context,
        ),
        timeout=90,
    )


def unpublish(plugin, target, volume_id="vol-1"):
    return plugin.node.NodeUnpublishVolume(
        pb.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target)), timeout=60
    )


def expect_error(code: grpc.StatusCode, call, *args, **kwargs) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    assert info.value.code() == code, info.value.details()
    return info.value.details()


def daemon_pid(target) -> int:
    return control.read_facts(str(target))["pid"]


def wait_gone(pid: int, bound: float) -> bool:
    """True once `pid` has exited (gone, or a zombie its new parent has not reaped yet)."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] in ("Z", "X"):
                    return True
        except OSError:
            return True
        time.sleep(0.02)
    return False


def wait_for_log(plugin: Plugin, text: str, bound: float = 30) -> None:
    deadline = time.monotonic() + bound
    while text not in plugin.log_text():
        assert time.monotonic() < deadline, plugin.log_text()
        time.sleep(0.05)


# --- identity and node info ------------------------------------------------------------------------


def test_identity_and_capabilities(plugin):
    info = plugin.identity.GetPluginInfo(pb.GetPluginInfoRequest(), timeout=10)
    assert info.name == "amlfs.csi.azureml.io"
    assert info.vendor_version
    caps = plugin.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest(), timeout=10)
    # a node-only plugin: no controller service
    assert all(
        c.service.type != pb.PluginCapability.Service.CONTROLLER_SERVICE for c in caps.capabilities
    )
    probe = plugin.identity.Probe(pb.ProbeRequest(), timeout=10)
    assert probe.HasField("ready") and probe.ready.value is True
    ncaps = plugin.node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest(), timeout=10)
    assert [c.rpc.type for c in ncaps.capabilities] == []  # no stage/unstage: one daemon each
    ninfo = plugin.node.NodeGetInfo(pb.NodeGetInfoRequest(), timeout=10)
    assert ninfo.node_id == "node-a" and ninfo.max_volumes_per_node == 7


def test_unimplemented_rpc_answers_unimplemented(plugin):
    # NodeStageVolume is not advertised: a generic call must get UNIMPLEMENTED, as the CO expects.
    call = plugin.channel.unary_unary(
        "/csi.v1.Node/NodeStageVolume",
        request_serializer=lambda m: b"",
        response_deserializer=lambda b: b,
    )
    expect_error(grpc.StatusCode.UNIMPLEMENTED, call, None, timeout=10)


# --- publish / unpublish ------------------------------------------------------------------------


def test_inline_publish_reads_readonly_idempotent(plugin, azurite, blob_files, tmp_path):
    target = tmp_path / "pods" / "uid1" / "volumes" / "vol"
    target.parent.mkdir(parents=True)
    ctx = inline_context(azurite, blob_files, path="data", cache_size="64M", block_size="1M")
    publish(plugin, target, ctx, secrets={"account_key": KEY})
    assert os.path.ismount(target)
    assert (target / "a.txt").read_bytes() == b"alpha\n"
    assert len((target / "sub" / "b.bin").read_bytes()) == 300_000
    assert sorted(os.listdir(target)) == ["a.txt", "sub"]
    # read-only enforcement
    with pytest.raises(OSError) as e:
        (target / "new.txt").write_bytes(b"x")
    assert e.value.errno == errno.EROFS
    pid = daemon_pid(target)
    assert control.read_facts(str(target))["cache_bytes"] == 64 << 20

    # idempotent: the same publish again leaves the same daemon serving
    publish(plugin, target, ctx, secrets={"account_key": KEY})
    assert daemon_pid(target) == pid

    # the secret went to a 0600 file, never to a command line
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert KEY.encode() not in f.read()
    reg = next((tmp_path / "state" / "volumes").glob("*/registry.yaml"))
    assert reg.stat().st_mode & 0o777 == 0o600
    assert KEY not in plugin.log_text()

    # another volume on the same target: ALREADY_EXISTS
    other = inline_context(azurite, blob_files, path="")
    expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        publish,
        plugin,
        target,
        other,
        secrets={"account_key": KEY},
        volume_id="vol-2",
    )

    unpublish(plugin, target)
    assert not os.path.lexists(target)  # the plugin removes the target it created
    assert not list((tmp_path / "state" / "volumes").iterdir())
    unpublish(plugin, target)  # idempotent: nothing left to do is success


def test_registry_datastore_preload_and_not_found(plugin, tmp_path):
    target = tmp_path / "t"
    publish(plugin, target, {"datastore": "training", "immutable": "true", "preload": "true"})
    # the daemon's --preload: every file hydrated into the disk cache, in the background
    deadline = time.monotonic() + 60
    while (p := control.read_facts(str(target))["preload"])["state"] != "done":
        assert time.monotonic() < deadline, p
        time.sleep(0.1)
    assert p["files_done"] == 3, p
    assert (target / "top.txt").read_bytes() == b"top\n"
    assert control.read_facts(str(target))["immutable"] is True
    unpublish(plugin, target)

    msg = expect_error(
        grpc.StatusCode.NOT_FOUND, publish, plugin, tmp_path / "t2", {"datastore": "nope"}
    )
    assert "nope" in msg
    msg = expect_error(
        grpc.StatusCode.NOT_FOUND,
        publish,
        plugin,
        tmp_path / "t3",
        {"datastore": "training", "path": "no/such/dir"},
    )
    assert "no/such/dir" in msg


def test_bad_requests_are_invalid_argument(plugin, azurite, blob_files, tmp_path):
    ctx = inline_context(azurite, blob_files)
    key = {"account_key": KEY}
    invalid = grpc.StatusCode.INVALID_ARGUMENT

    def pub(**kw):
        req = dict(
            volume_id="v",
            target_path=str(tmp_path / "x"),
            volume_capability=capability(),
            secrets=key,
            volume_context=ctx,
        )
        req.update(kw)
        return plugin.node.NodePublishVolume(pb.NodePublishVolumeRequest(**req), timeout=30)

    assert "volume_id" in expect_error(invalid, pub, volume_id="")
    assert "target_path" in expect_error(invalid, pub, target_path="")
    assert "target_path" in expect_error(invalid, pub, target_path="relative/dir")
    assert "volume_capability" in expect_error(invalid, pub, volume_capability=None)
    assert "block" in expect_error(invalid, pub, volume_capability=capability(block=True))
    assert "access_mode" in expect_error(
        invalid, pub, volume_capability=pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume())
    )
    # attributes
    assert "'contianer_name'" in expect_error(
        invalid, pub, volume_context={**ctx, "contianer_name": "x"}
    )
    assert "'type'" in expect_error(invalid, pub, volume_context={**ctx, "type": "s3"})
    no_container = {k: v for k, v in ctx.items() if k != "container_name"}
    assert "container_name" in expect_error(invalid, pub, volume_context=no_container)
    assert "cache_size" in expect_error(invalid, pub, volume_context={**ctx, "cache_size": "lots"})
    assert "disk_cache_size" in expect_error(
        invalid, pub, volume_context={**ctx, "disk_cache_size": "lots"}
    )
    assert "'disk_cache'" in expect_error(
        invalid, pub, volume_context={**ctx, "disk_cache": "maybe"}
    )
    assert "preload" in expect_error(
        invalid, pub, volume_context={**ctx, "disk_cache": "false", "preload": "true"}
    )
    assert "mount option" in expect_error(
        invalid, pub, volume_capability=capability(flags=["cache_size=1G,bogus"])
    )
    # rw with a read-only request
    assert "rw conflicts" in expect_error(
        invalid, pub, volume_context={**ctx, "rw": "true"}, readonly=True
    )
    # unpublish
    assert "volume_id" in expect_error(
        invalid,
        plugin.node.NodeUnpublishVolume,
        pb.NodeUnpublishVolumeRequest(target_path=str(tmp_path / "x")),
    )
    assert "target_path" in expect_error(
        invalid, plugin.node.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(volume_id="v")
    )
    assert not (tmp_path / "x").exists()


def test_disk_cache_attributes(plugin, azurite, blob_files, tmp_path):
    """disk_cache_size caps the node's disk cache for this volume; disk_cache=false turns it off."""
    ctx = inline_context(azurite, blob_files)
    sized, off = tmp_path / "sized", tmp_path / "off"
    key = {"account_key": KEY}
    publish(plugin, sized, {**ctx, "disk_cache_size": "64Mi"}, secrets=key, volume_id="v-sized")
    publish(plugin, off, {**ctx, "disk_cache": "false"}, secrets=key, volume_id="v-off")
    try:
        assert control.read_facts(str(sized))["disk"]["capacity"] == 64 << 20
        assert control.read_facts(str(off))["disk"] is None
        assert (sized / "top.txt").read_bytes() == (off / "top.txt").read_bytes() == b"top\n"
    finally:
        unpublish(plugin, sized)
        unpublish(plugin, off)


def test_rw_volume_commits_writes(plugin, azurite, blob_files, tmp_path):
    """rw=true with a writer access mode: a writable mount whose files are committed on close."""
    target = tmp_path / "rw"
    ctx = inline_context(azurite, blob_files, path="out", rw="true")
    cap = capability(mode=MODE.SINGLE_NODE_WRITER)
    publish(plugin, target, ctx, secrets={"account_key": KEY}, cap=cap, readonly=False)
    payload = os.urandom(200_000)
    (target / "ckpt.tmp").write_bytes(payload)
    os.replace(target / "ckpt.tmp", target / "ckpt.pt")
    cc = azurite.service().get_container_client(blob_files)
    assert cc.download_blob("out/ckpt.pt").readall() == payload
    assert not any(b.name == "out/ckpt.tmp" for b in cc.list_blobs(name_starts_with="out/"))
    unpublish(plugin, target)
    assert not os.path.lexists(target)


def test_missing_and_wrong_secrets(plugin, azurite, blob_files, tmp_path):
    ctx = inline_context(azurite, blob_files)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    msg = expect_error(invalid, publish, plugin, tmp_path / "a", ctx, secrets={})
    assert "credential" in msg and "account_key" in msg
    msg = expect_error(invalid, publish, plugin, tmp_path / "a", ctx, secrets={"acount_key": KEY})
    assert "'acount_key'" in msg and KEY not in msg
    msg = expect_error(
        invalid,
        publish,
        plugin,
        tmp_path / "a",
        ctx,
        secrets={"client_id": "app", "tenant_id": "t"},
    )
    assert "client_secret" in msg
    # a key the storage refuses: PERMISSION_DENIED, and the key shows nowhere
    msg = expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        publish,
        plugin,
        tmp_path / "a",
        ctx,
        secrets={"azurestorageaccountkey": BAD_KEY},
    )
    assert BAD_KEY not in msg and BAD_KEY not in plugin.log_text()
    # a failed publish leaves nothing behind: no mount, no target, no credential file
    assert control.find_mount(str(tmp_path / "a")) is None
    assert not (tmp_path / "a").exists()
    assert not list((tmp_path / "state" / "volumes").iterdir())
    unpublish(plugin, tmp_path / "a")


def test_sas_secret_and_connection_string(plugin, azurite, blob_files, tmp_path):
    import datetime as dt

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        ACCOUNT,
        blob_files,
        account_key=KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    ctx = inline_context(azurite, blob_files, path="data")
    publish(plugin, tmp_path / "s", ctx, secrets={"azurestorageaccountsastoken": sas})
    assert (tmp_path / "s" / "a.txt").read_bytes() == b"alpha\n"
    sig = sas.split("sig=")[1].split("&")[0]
    assert sig not in plugin.log_text()
    unpublish(plugin, tmp_path / "s")
    cs = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint={azurite.account_url};"
    )
    no_url = {k: v for k, v in ctx.items() if k != "account_url"}
    publish(plugin, tmp_path / "c", no_url, secrets={"connection_string": cs}, volume_id="c")
    assert sorted(os.listdir(tmp_path / "c")) == ["a.txt", "sub"]
    unpublish(plugin, tmp_path / "c", "c")


def test_bad_target_paths(plugin, azurite, blob_files, tmp_path):
    ctx = inline_context(azurite, blob_files)
    key = {"account_key": KEY}
    afile = tmp_path / "afile"
    afile.write_text("x")
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, publish, plugin, afile, ctx, secrets=key)
    nonempty = tmp_path / "full"
    nonempty.mkdir()
    (nonempty / "f").write_text("x")
    expect_error(grpc.StatusCode.FAILED_PRECONDITION, publish, plugin, nonempty, ctx, secrets=key)
    expect_error(
        grpc.StatusCode.NOT_FOUND, publish, plugin, tmp_path / "no" / "parent", ctx, secrets=key
    )
    # unpublishing a target that was never published is success
    unpublish(plugin, tmp_path / "never")


# --- surviving the plugin, repairing the daemon ---------------------------------------------------


def test_mount_survives_plugin_restart_and_is_adopted(plugin, azurite, blob_files, tmp_path):
    target = tmp_path / "t"
    ctx = inline_context(azurite, blob_files, path="data")
    publish(plugin, target, ctx, secrets={"account_key": KEY})
    pid = daemon_pid(target)
    plugin.kill()
    # the daemon was never the plugin's child: it serves on
    assert (target / "a.txt").read_bytes() == b"alpha\n"
    assert daemon_pid(target) == pid

    plugin.start()
    assert "adopted 1 live mount" in plugin.log_text()
    publish(plugin, target, ctx, secrets={"account_key": KEY})  # kubelet's republish
    assert daemon_pid(target) == pid  # adopted, not remounted
    unpublish(plugin, target)
    assert not os.path.lexists(target)
    assert wait_gone(pid, 10)  # the daemon exits with its mount


def test_crashed_server_is_restarted_and_adopts(plugin, azurite, blob_files, tmp_path):
    target = tmp_path / "t"
    ctx = inline_context(azurite, blob_files, path="data")
    publish(plugin, target, ctx, secrets={"account_key": KEY})
    pid = daemon_pid(target)
    server = plugin.server_pids()[-1]
    os.kill(server, signal.SIGKILL)  # the gRPC server crashes; its supervisor lives
    plugin.wait_serving(previous=server)
    assert plugin.log_text().count("adopted 1 live mount") == 1
    assert (target / "a.txt").read_bytes() == b"alpha\n"
    publish(plugin, target, ctx, secrets={"account_key": KEY})
    assert daemon_pid(target) == pid
    unpublish(plugin, target)
    assert wait_gone(pid, 10)


def test_cache_budget(plugin, azurite, blob_files, tmp_path):
    ctx = inline_context(azurite, blob_files, cache_size="1536M")
    key = {"account_key": KEY}
    publish(plugin, tmp_path / "a", ctx, secrets=key, volume_id="a")
    msg = expect_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        publish,
        plugin,
        tmp_path / "b",
        ctx,
        secrets=key,
        volume_id="b",
    )
    assert "hold 1536MiB of its 2GiB cache budget" in msg, msg
    publish(plugin, tmp_path / "b", {**ctx, "cache_size": "512M"}, secrets=key, volume_id="b")
    unpublish(plugin, tmp_path / "a", "a")
    unpublish(plugin, tmp_path / "b", "b")


def test_dead_daemon_is_repaired_on_republish(plugin, azurite, blob_files, tmp_path):
    target = tmp_path / "t"
    ctx = inline_context(azurite, blob_files, path="data")
    publish(plugin, target, ctx, secrets={"account_key": KEY})
    pid = daemon_pid(target)
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, 10)
    with pytest.raises(OSError) as e:
        os.listdir(target)
    # the kernel's answers for a FUSE mount whose daemon is gone
    assert e.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    publish(plugin, target, ctx, secrets={"account_key": KEY})
    assert (target / "a.txt").read_bytes() == b"alpha\n"
    assert daemon_pid(target) != pid
    assert "dead; remounting" in plugin.log_text()
    unpublish(plugin, target)


def test_workload_identity(sp_env, tmp_path, monkeypatch):
    """An inline ADLS volume authenticated by the pod's service-account token, exchanged for an
    Azure AD token as a client assertion (by the daemon: the test AAD checks the assertion, the
    HTTPS ADLS server the bearer token). The token reaches the daemon in a 0600 file that a
    republish rewrites; a token AAD refuses is PERMISSION_DENIED."""
    from tests.servers.fixtures import make_adls_config

    server = sp_env.server
    ds = make_adls_config(server)
    ds_backend_key = open_backend(ds)
    try:
        ds_backend_key.write_bytes("x/hello.txt", b"hello from adls\n")
    finally:
        ds_backend_key.close()
    client = "wi-client-0001"
    server.aad.federated[client] = "sa-token-one"
    plugin = Plugin(tmp_path)  # started here, after sp_env: it trusts the server's certificate
    plugin.start()
    try:

        def context(token: str, **extra) -> dict[str, str]:
            return {
                "type": "azure_data_lake_gen2",
                "account_name": ds.account_name,
                "filesystem": ds.filesystem,
                "account_url": ds.account_url,
                "path": "x",
                "client_id": client,
                "tenant_id": server.aad.tenant_id,
                "authority_host": server.base_url,
                volume.TOKENS_KEY: json.dumps(
                    {volume.TOKEN_AUDIENCE: {"token": token, "expirationTimestamp": "2030-01-01"}}
                ),
                **extra,
            }

        target = tmp_path / "t"
        publish(plugin, target, context("sa-token-one"))
        assert (target / "hello.txt").read_bytes() == b"hello from adls\n"
        token_file = plugin.state_dir_of(target) / "token"
        assert token_file.read_text() == "sa-token-one"
        assert token_file.stat().st_mode & 0o777 == 0o600
        pid = daemon_pid(target)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"sa-token-one" not in f.read()

        # kubelet republishes with a fresh token: the same daemon, the file rewritten
        server.aad.federated[client] = "sa-token-two"
        publish(plugin, target, context("sa-token-two"))
        assert daemon_pid(target) == pid
        assert token_file.read_text() == "sa-token-two"

        # a token AAD does not accept
        msg = expect_error(
            grpc.StatusCode.PERMISSION_DENIED,
            publish,
            plugin,
            tmp_path / "u",
            context("sa-token-stale"),
            volume_id="vol-u",
        )
        assert "sa-token-stale" not in msg and "sa-token" not in plugin.log_text()
        unpublish(plugin, tmp_path / "u", "vol-u")

        # missing pieces name the field
        no_tenant = {k: v for k, v in context("t").items() if k != "tenant_id"}
        msg = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT, publish, plugin, tmp_path / "v", no_tenant
        )
        assert "'tenant_id'" in msg
        other = {**context("t"), volume.TOKENS_KEY: json.dumps({"other": {"token": "x"}})}
        assert volume.TOKEN_AUDIENCE in expect_error(
            grpc.StatusCode.INVALID_ARGUMENT, publish, plugin, tmp_path / "v", other
        )
        unpublish(plugin, target)
    finally:
        plugin.stop()
        for m in control.list_mounts():
            if m.mountpoint.startswith(str(tmp_path)):
                control.unmount(m.mountpoint, lazy=True)


def test_workload_identity_refusal_is_forbidden_in_the_backend(sp_env, tmp_path, monkeypatch):
    """What the daemon sees when Azure AD refuses the token: Forbidden (EACCES), naming the
    workload identity, not a crash inside the storage SDK."""
    from dataclasses import replace

    from amlfs.backends import Forbidden
    from amlfs.registry import Credentials
    from tests.servers.fixtures import make_adls_config

    server = sp_env.server
    server.aad.federated["wi-client-0002"] = "the-right-token"
    token = tmp_path / "token"
    token.write_text("a-wrong-token")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token))
    monkeypatch.setenv("AZURE_CLIENT_ID", "wi-client-0002")
    monkeypatch.setenv("AZURE_TENANT_ID", server.aad.tenant_id)
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", server.base_url)
    ds = replace(make_adls_config(server), credentials=Credentials())
    backend = open_backend(ds, retry_total=0)
    try:
        with pytest.raises(Forbidden) as e:
            backend.check_access()
        assert "workload identity" in str(e.value) and "a-wrong-token" not in str(e.value)
        token.write_text("the-right-token")
        backend2 = open_backend(ds, retry_total=0)
        try:
            backend2.check_access()  # the same settings with the token AAD accepts
        finally:
            backend2.close()
    finally:
        backend.close()
