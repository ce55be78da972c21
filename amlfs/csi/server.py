"""The CSI gRPC server: the Identity and Node services over a unix socket, backed by node.Node.

Each RPC runs on a worker of a bounded thread pool; a publish or unpublish takes the lock of its
target path (node.py), so that calls for different volumes proceed in parallel. Request secrets
are never logged: a request is logged by its volume id and target path only.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from concurrent import futures
from importlib.metadata import PackageNotFoundError, version

import grpc
from google.protobuf.wrappers_pb2 import BoolValue

from ..errors import AmlfsError, UsageError
from . import csi_pb2 as pb
from . import csi_pb2_grpc as pb_grpc
from .node import Node
from .volume import INTERNAL, VolumeError, build_spec

log = logging.getLogger(__name__)

DRIVER_NAME = "amlfs.csi.azureml.io"
_READ_ONLY_MODES = (
    pb.VolumeCapability.AccessMode.SINGLE_NODE_READER_ONLY,
    pb.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY,
)


def _version() -> str:
    try:
        return version("amlfs")
    except PackageNotFoundError:
        return "0.0.0"


class IdentityService(pb_grpc.IdentityServicer):
    def __init__(self, name: str, ready: threading.Event):
        self.name = name
        self.ready = ready

    def GetPluginInfo(self, request, context):  # noqa: N802 (gRPC method names)
        return pb.GetPluginInfoResponse(name=self.name, vendor_version=_version())

    def GetPluginCapabilities(self, request, context):  # noqa: N802
        # A node-only plugin: no controller service, volumes reachable from every node.
        return pb.GetPluginCapabilitiesResponse(capabilities=[])

    def Probe(self, request, context):  # noqa: N802
        return pb.ProbeResponse(ready=BoolValue(value=self.ready.is_set()))


class NodeService(pb_grpc.NodeServicer):
    def __init__(self, node: Node, max_volumes: int):
        self.node = node
        self.max_volumes = max_volumes

    def NodeGetCapabilities(self, request, context):  # noqa: N802
        # One daemon per publish: no STAGE_UNSTAGE_VOLUME, no stats (the mount has `amlfs stats`).
        return pb.NodeGetCapabilitiesResponse(capabilities=[])

    def NodeGetInfo(self, request, context):  # noqa: N802
        return pb.NodeGetInfoResponse(
            node_id=self.node.node_id, max_volumes_per_node=self.max_volumes
        )

    def NodePublishVolume(self, request, context):  # noqa: N802
        log.info("publish %s at %s", request.volume_id, request.target_path)
        try:
            cap = request.volume_capability
            if not request.HasField("volume_capability"):
                raise VolumeError("INVALID_ARGUMENT", "volume_capability is required")
            if cap.HasField("block"):
                raise VolumeError(
                    "INVALID_ARGUMENT", "volume_capability: block volumes are not supported"
                )
            if not cap.HasField("mount"):
                raise VolumeError(
                    "INVALID_ARGUMENT", "volume_capability: access_type mount is required"
                )
            if not cap.HasField("access_mode") or cap.access_mode.mode == 0:
                raise VolumeError("INVALID_ARGUMENT", "volume_capability.access_mode is required")
            if cap.mount.fs_type not in ("", "fuse", "amlfs"):
                raise VolumeError(
                    "INVALID_ARGUMENT",
                    f"volume_capability: fs_type {cap.mount.fs_type!r}"
                    " is not supported (leave it empty)",
                )
            spec = build_spec(
                volume_id=request.volume_id,
                target_path=request.target_path,
                volume_context=dict(request.volume_context),
                secrets=dict(request.secrets),
                mount_flags=list(cap.mount.mount_flags),
                readonly_request=request.readonly,
                access_mode_readonly=cap.access_mode.mode in _READ_ONLY_MODES,
                registry_path=self.node.registry_path,
            )
            for note in spec.notes:
                log.info("volume %s: %s", spec.volume_id, note)
            done = self.node.publish(spec)
        except VolumeError as e:
            return _abort(context, e, request.volume_id)
        except AmlfsError as e:
            return _abort(context, VolumeError(INTERNAL, str(e)), request.volume_id)
        log.info("publish %s at %s: %s", request.volume_id, request.target_path, done)
        return pb.NodePublishVolumeResponse()

    def NodeUnpublishVolume(self, request, context):  # noqa: N802
        log.info("unpublish %s at %s", request.volume_id, request.target_path)
        try:
            done = self.node.unpublish(request.volume_id, request.target_path)
        except VolumeError as e:
            return _abort(context, e, request.volume_id)
        except AmlfsError as e:
            return _abort(context, VolumeError(INTERNAL, str(e)), request.volume_id)
        log.info("unpublish %s at %s: %s", request.volume_id, request.target_path, done)
        return pb.NodeUnpublishVolumeResponse()


def _abort(context, e: VolumeError, volume_id: str):
    log.warning("volume %s: %s: %s", volume_id or "-", e.code, e)
    context.abort(getattr(grpc.StatusCode, e.code), str(e))


def parse_endpoint(endpoint: str) -> str:
    """The socket path of `unix:///path` (or `unix:/path`, or a bare absolute path)."""
    if endpoint.startswith("unix://"):
        path = endpoint[len("unix://") :]
    elif endpoint.startswith("unix:"):
        path = endpoint[len("unix:") :]
    else:
        path = endpoint
    if not path.startswith("/"):
        raise UsageError(f"--endpoint {endpoint!r} must be unix:///ABSOLUTE/PATH")
    return path


def serve(
    endpoint: str,
    node: Node,
    name: str = DRIVER_NAME,
    max_volumes: int = 0,
    workers: int = 8,
) -> None:
    """Serve until SIGTERM or SIGINT; the mounts stay (they are not ours to end)."""
    path = parse_endpoint(endpoint)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.unlink(path)  # a previous plugin's socket
    except FileNotFoundError:
        pass
    ready = threading.Event()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    pb_grpc.add_IdentityServicer_to_server(IdentityService(name, ready), server)
    pb_grpc.add_NodeServicer_to_server(NodeService(node, max_volumes), server)
    server.add_insecure_port(f"unix://{path}")
    server.start()
    os.chmod(path, 0o660)
    counts = node.adopt()
    log.info(
        "serving CSI %s on %s (pid %d); adopted %d live mount(s), %d dead (repaired on republish)",
        name,
        path,
        os.getpid(),
        counts["live"],
        counts["dead"],
    )
    ready.set()
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    log.info("stopping; the mounts stay up")
    server.stop(grace=5).wait(10)
