"""`amlfs csi`: serve the Kubernetes CSI node plugin (deploy/ has the manifests)."""

from __future__ import annotations

import logging
import os
import socket

import click

from ..errors import UsageError
from .common import AppContext, examples, main, pass_app


@main.command(
    "csi",
    epilog=examples(
        "amlfs csi --endpoint unix:///csi/csi.sock --node-id $NODE_NAME",
        "amlfs --registry /etc/amlfs/datastores.yaml csi --state-dir /var/lib/amlfs-csi",
    ),
)
@click.option(
    "--endpoint",
    default="unix:///csi/csi.sock",
    show_default=True,
    help="The gRPC socket kubelet's registrar points at (unix:///PATH).",
)
@click.option(
    "--node-id",
    envvar="NODE_NAME",
    help="This node's name (default: $NODE_NAME, else the host name).",
)
@click.option(
    "--state-dir",
    default="/var/lib/amlfs-csi",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the plugin records its mounts and their daemons' secrets (0700; keep it on the host).",
)
@click.option(
    "--driver-name", default="amlfs.csi.azureml.io", show_default=True, help="The CSI driver name."
)
@click.option(
    "--max-volumes",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Volumes this node takes at most (0: no limit); size it from the cache budget.",
)
@click.option(
    "--start-timeout",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds a mount daemon has to go live.",
)
@pass_app
def csi(
    app: AppContext,
    endpoint: str,
    node_id: str | None,
    state_dir: str,
    driver_name: str,
    max_volumes: int,
    start_timeout: float,
) -> None:
    """Serve the CSI v1 Identity and Node services: each published volume is an amlfs mount.

    Volumes name a datastore of the node's registry (--registry) or describe one inline (type,
    account_name, container_name...); see deploy/README.md. The mount daemons outlive the
    plugin: a restarted plugin adopts them from --state-dir. Runs until SIGTERM.
    """
    try:
        from ..csi.node import Node
        from ..csi.server import serve
    except ImportError as e:
        raise UsageError(f"amlfs csi needs the csi extra (pip install 'amlfs[csi]'): {e}") from None
    logging.getLogger("amlfs").setLevel(logging.DEBUG if app.debug else logging.INFO)
    registry = os.path.abspath(app.registry_path) if app.registry_path else None
    node = Node(
        os.path.abspath(state_dir),
        node_id or socket.gethostname(),
        registry_path=registry,
        start_timeout=start_timeout,
    )
    serve(endpoint, node, name=driver_name, max_volumes=max_volumes)
