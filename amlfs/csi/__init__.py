"""`amlfs csi`: a Kubernetes CSI v1 node plugin that publishes datastores as amlfs mounts.

volume.py validates a publish request, state.py keeps what survives a restart of the plugin,
node.py runs the mount daemons, server.py speaks gRPC (csi_pb2*.py are generated from csi.proto
by scripts/gen-csi-proto.sh). Needs the `csi` extra (grpcio, protobuf).
"""
