"""`amlfs csi`: serve the Kubernetes CSI node plugin (deploy/ has the manifests)."""

from __future__ import annotations

import logging
import os
import socket
import sys

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
    "--cache-budget",
    metavar="SIZE",
    help="Memory all mounts' caches may hold together (default: no limit); a publish past it"
    " gets RESOURCE_EXHAUSTED. Size the container's memory limit from it (deploy/README.md).",
)
@click.option(
    "--start-timeout",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds a mount daemon has to go live.",
)
@click.option(
    "--no-supervisor",
    is_flag=True,
    help="Serve in this process (no supervising parent that restarts a crashed server).",
)
@pass_app
def csi(
    app: AppContext,
    endpoint: str,
    node_id: str | None,
    state_dir: str,
    driver_name: str,
    max_volumes: int,
    cache_budget: str | None,
    start_timeout: float,
    no_supervisor: bool,
) -> None:
    """Serve the CSI v1 Identity and Node services: each published volume is an amlfs mount.

    Volumes name a datastore of the node's registry (--registry) or describe one inline (type,
    account_name, container_name...); see deploy/README.md. The mount daemons outlive the
    plugin: a restarted plugin adopts them from --state-dir. Runs until SIGTERM, as a small
    supervisor that restarts the gRPC server if it dies and reaps the mount daemons.
    """
    try:
        from ..csi.node import Node
        from ..csi.server import serve
    except ImportError as e:
        raise UsageError(f"amlfs csi needs the csi extra (pip install 'amlfs[csi]'): {e}") from None
    from ..units import parse_size

    budget = parse_size(cache_budget, "--cache-budget", 1 << 20, 1 << 50) if cache_budget else None
    logging.getLogger("amlfs").setLevel(logging.DEBUG if app.debug else logging.INFO)
    registry = os.path.abspath(app.registry_path) if app.registry_path else None
    from ..csi.server import parse_endpoint

    parse_endpoint(endpoint)
    node_id = node_id or socket.gethostname()
    if not no_supervisor:
        from ..csi.supervisor import supervise

        argv = [sys.executable, "-m", "amlfs"]
        argv += ["--registry", registry] if registry else []
        argv += ["--debug"] if app.debug else []
        argv += ["csi", "--no-supervisor", "--endpoint", endpoint, "--node-id", node_id]
        argv += ["--state-dir", os.path.abspath(state_dir), "--driver-name", driver_name]
        argv += ["--max-volumes", str(max_volumes), "--start-timeout", str(start_timeout)]
        argv += ["--cache-budget", cache_budget] if cache_budget else []
        sys.exit(supervise(argv))
    node = Node(
        os.path.abspath(state_dir),
        node_id,
        registry_path=registry,
        start_timeout=start_timeout,
        cache_budget=budget,
    )
    serve(endpoint, node, name=driver_name, max_volumes=max_volumes)
