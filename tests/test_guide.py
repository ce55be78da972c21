"""The datastore guide's Python examples (../shared/reference), as written, with `amlfs` in place of
`azureml.core` and Azurite's address given as `account_url` (the one amlfs extension they need)."""

from __future__ import annotations

import filecmp
import os

import pytest

from .azurite import ACCOUNT, KEY


@pytest.fixture
def sample(tmp_path):
    src = tmp_path / "your source directory"
    (src / "sub dir").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha")
    (src / "sub dir" / "b+%.bin").write_bytes(os.urandom(70_000))
    (src / "sub dir" / "ü.txt").write_text("unicode")
    return src


def test_guide_create_get_default_and_list(tmp_path, monkeypatch, azurite):
    monkeypatch.setenv("AMLFS_REGISTRY", str(tmp_path / "ws.yaml"))
    from amlfs import Datastore, Workspace

    ws = Workspace.from_config()
    ds = ws.get_default_datastore()
    assert ds.name == "workspaceblobstore" and ds.datastore_type == "Local"

    ds = Datastore.register_azure_blob_container(
        workspace=ws,
        datastore_name="your_datastore_name",
        container_name="your-azure-blob-container",
        account_name=ACCOUNT,
        account_key=KEY,
        create_if_not_exists=True,
        account_url=azurite.account_url,
    )
    assert ds.datastore_type == "AzureBlob"
    assert azurite.service().get_container_client("your-azure-blob-container").exists()

    ds = Datastore.get(ws, datastore_name="your_datastore_name")
    names = []
    for ds in ws.datastores():
        print(ds.name, ds.datastore_type)
        names.append(ds.name)
    assert names == ["workspaceblobstore", "your_datastore_name"]

    ws.set_default_datastore("your_datastore_name")
    assert Workspace.from_config().get_default_datastore().name == "your_datastore_name"
    assert set(ws.datastores) == set(names)


def test_guide_upload_download_blob(tmp_path, monkeypatch, azurite, container, sample):
    monkeypatch.setenv("AMLFS_REGISTRY", str(tmp_path / "ws.yaml"))
    from amlfs import Datastore, Workspace

    ws = Workspace.from_config()
    ds = Datastore.register_azure_blob_container(
        workspace=ws,
        datastore_name="blobs",
        container_name=container,
        account_name=ACCOUNT,
        account_key=KEY,
        account_url=azurite.account_url,
    )
    ds.upload(
        src_dir=str(sample), target_path="your target path", overwrite=True, show_progress=True
    )
    target = tmp_path / "your target path local"
    n = ds.download(target_path=str(target), prefix="your target path", show_progress=True)
    assert n == 3
    cmp = filecmp.dircmp(sample, target / "your target path")
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files
    assert filecmp.cmp(
        sample / "sub dir" / "b+%.bin",
        target / "your target path" / "sub dir" / "b+%.bin",
        shallow=False,
    )


def test_guide_upload_files_and_default_local(tmp_path, monkeypatch, sample):
    monkeypatch.setenv("AMLFS_REGISTRY", str(tmp_path / "ws.yaml"))
    from amlfs import Workspace

    ds = Workspace.from_config().get_default_datastore()
    files = [str(sample / "a.txt"), str(sample / "sub dir" / "ü.txt")]
    ds.upload_files(
        files, relative_root=str(sample), target_path="picked", overwrite=True, show_progress=False
    )
    n = ds.download(target_path=str(tmp_path / "out"), prefix="picked", show_progress=False)
    assert n == 2
    assert (tmp_path / "out" / "picked" / "sub dir" / "ü.txt").read_text() == "unicode"


def test_guide_adls_gen1_call_explains_retirement(tmp_path, monkeypatch):
    monkeypatch.setenv("AMLFS_REGISTRY", str(tmp_path / "ws.yaml"))
    from amlfs import Datastore, UsageError, Workspace

    ws = Workspace.from_config()
    with pytest.raises(TypeError, match="did you mean 'client_id'"):
        Datastore.register_azure_data_lake(
            workspace=ws,
            datastore_name="your datastore name",
            store_name="your ADLS store name",
            tenant_id="the Directory ID/Tenant ID of the service principal",
            cliend_id="the Client ID/Application ID of the service principal",
            client_secret="the secret of the service principal",
        )
    with pytest.raises(UsageError, match="retired on 2024-02-29.*register_azure_data_lake_gen2"):
        Datastore.register_azure_data_lake(
            workspace=ws,
            datastore_name="gen1",
            store_name="store",
            tenant_id="t",
            client_id="c",
            client_secret="s",
        )
    assert "gen1" not in ws.datastores


def test_download_failure_raises_after_copying_the_rest(tmp_path, monkeypatch):
    """A file that cannot be written locally fails alone; the API then raises one clear error."""
    monkeypatch.setenv("AMLFS_REGISTRY", str(tmp_path / "ws.yaml"))
    from amlfs import AmlfsError, Workspace

    ds = Workspace.from_config().get_default_datastore()
    b = ds.backend()
    b.write_bytes("d/good.txt", b"good")
    b.write_bytes("d/bad", b"bad")
    b.close()
    (tmp_path / "out" / "d" / "bad").mkdir(parents=True)  # a directory where the file must go
    with pytest.raises(AmlfsError, match=r"1 file\(s\) failed to download: d/bad"):
        ds.download(
            target_path=str(tmp_path / "out"), prefix="d", overwrite=True, show_progress=False
        )
    assert (tmp_path / "out" / "d" / "good.txt").read_bytes() == b"good"


def test_register_validates_unless_skip_validation(tmp_path, azurite):
    """As in Azure ML v1: registration checks the storage unless skip_validation=True."""
    from amlfs import Datastore, Workspace
    from amlfs.errors import AmlfsError

    ws = Workspace.from_config(str(tmp_path / "ws.yaml"))
    kwargs = dict(
        workspace=ws, datastore_name="missing", container_name="nosuchcontainer",
        account_name=ACCOUNT, account_key=KEY, account_url=azurite.account_url,
    )  # fmt: skip
    with pytest.raises(AmlfsError, match="not found"):
        Datastore.register_azure_blob_container(**kwargs)
    assert "missing" not in ws.registry.datastores
    ds = Datastore.register_azure_blob_container(**kwargs, skip_validation=True)
    assert ds.name == "missing"
