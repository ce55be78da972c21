"""A real dask.distributed cluster (worker processes on loopback) writing and reading a
partitioned Parquet dataset on an Azurite datastore through `azureml://`: the workers get the
filesystem as its storage options (a registry path) and resolve the credential themselves."""

from __future__ import annotations

import os
import pickle

import pytest

from amlfs.remotefs import AzureMLFileSystem

from .azurite import KEY
from .test_fsspec import write_registry

pytestmark = pytest.mark.azurite

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")
pd = pytest.importorskip("pandas")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=2,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        worker_dashboard_address=None,
    ) as cluster:
        yield cluster


def test_dask_writes_and_reads_partitioned_parquet(cluster, tmp_path, blob_config):
    registry = write_registry(tmp_path / "datastores.yaml", blob_config)
    opts = {"registry": registry}
    root = "azureml://datastores/azblob/paths/dask/events"
    df = pd.DataFrame(
        {
            "day": [f"2026-11-{1 + i % 4:02d}" for i in range(4000)],
            "n": range(4000),
            "text": [f"row {i}" for i in range(4000)],
        }
    )
    with distributed.Client(cluster) as client:
        ddf = dd.from_pandas(df, npartitions=4)
        ddf.to_parquet(root, partition_on=["day"], storage_options=opts, write_index=False)

        # The graph carries the filesystem as its options: the registry path, never the key.
        back = dd.read_parquet(root, storage_options=opts)
        assert KEY.encode() not in pickle.dumps(back.optimize().dask)

        # Every task ran in a worker process (none in this one).
        pids = client.run(os.getpid)
        assert len(pids) == 2 and os.getpid() not in pids.values()
        got = back.compute().sort_values("n").reset_index(drop=True)

    fs = AzureMLFileSystem(registry=registry, skip_instance_cache=True)
    files = fs.find(root)
    assert {f.split("/")[3] for f in files} == {f"day=2026-11-0{d}" for d in range(1, 5)}
    assert all(f.endswith(".parquet") for f in files)
    assert got["n"].tolist() == list(range(4000))
    assert got["text"].tolist() == df["text"].tolist()
    assert got["day"].astype(str).tolist() == df["day"].tolist()
    fs.close()
