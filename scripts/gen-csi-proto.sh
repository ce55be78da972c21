#!/usr/bin/env bash
# Regenerates amlfs/csi/csi_pb2.py, csi_pb2.pyi and csi_pb2_grpc.py from amlfs/csi/csi.proto
# (the CSI v1 subset amlfs serves). The generated files are committed; run this after editing
# the .proto, with grpcio-tools installed (pip install -e '.[test]'), from any directory.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
# -I . makes the generated modules import each other as amlfs.csi.csi_pb2 (a package import).
"$py" -m grpc_tools.protoc -I . \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  amlfs/csi/csi.proto
echo "generated with grpcio-tools $("$py" -c 'from importlib.metadata import version; print(version("grpcio-tools"))')"
