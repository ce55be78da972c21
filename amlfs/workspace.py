"""The Python API of the Azure ML SDK v1 datastore guide: Workspace and Datastore.

`Workspace` is a registry file; `Datastore` is one registered datastore with upload/download.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable

from .backends import Backend, open_backend
from .errors import AmlfsError, UsageError
from .registry import (
    ADLS,
    BLOB,
    FILE,
    LOCAL,
    Credentials,
    DatastoreConfig,
    Registry,
    datastore_to_dict,
    parse_datastore,
)

DATASTORE_TYPES = {BLOB: "AzureBlob", FILE: "AzureFile", ADLS: "AzureDataLakeGen2", LOCAL: "Local"}


def register_datastore(
    workspace: Workspace,
    cfg: DatastoreConfig,
    overwrite: bool = False,
    create_if_not_exists: bool = False,
    make_default: bool = False,
    verify: bool = False,
) -> Datastore:
    """Validate `cfg`, create its storage on request, check that it answers (`verify`, see
    verify.py), add it to the registry and save."""
    cfg = parse_datastore(datastore_to_dict(cfg), source="")  # the message names the datastore
    reg = workspace.registry
    if cfg.name in reg.datastores and not overwrite:
        reg.add(cfg)  # refuses, naming the datastore
    if create_if_not_exists:
        open_backend(cfg, create_if_not_exists=True).close()
    if verify:
        from .verify import verify_datastore

        verify_datastore(cfg)
    reg.add(cfg, overwrite=overwrite, make_default=make_default)
    reg.save()
    return Datastore(workspace, cfg.name)


def _azure_config(
    ds_type: str,
    name: str,
    account_name: str | None,
    protocol: str | None,
    endpoint: str | None,
    account_url: str | None,
    container: dict[str, str],
    **credentials: str | None,
) -> DatastoreConfig:
    return DatastoreConfig(
        name=name,
        type=ds_type,
        account_name=account_name,
        protocol=protocol or "https",
        endpoint=endpoint or "core.windows.net",
        account_url=account_url,
        credentials=Credentials(**credentials),
        **container,
    )


def _check(result, verb: str):
    """Raise one clear error when some files failed (the others were still transferred)."""
    if result.failed:
        shown = "; ".join(f"{name}: {why}" for name, why in result.failed[:3])
        more = f" (and {len(result.failed) - 3} more)" if len(result.failed) > 3 else ""
        raise AmlfsError(f"{len(result.failed)} file(s) failed to {verb}: {shown}{more}")
    return result


class DatastoreMap(dict):
    """`ws.datastores`: a mapping name -> Datastore. Also callable, returning the datastores,
    because the v1 guide iterates `ws.datastores()`."""

    def __call__(self) -> list[Datastore]:
        return list(self.values())


class Workspace:
    """A registry of datastores with a default one (the embedded local `workspaceblobstore`)."""

    def __init__(self, registry: Registry):
        self.registry = registry

    @classmethod
    def from_config(cls, path: str | None = None) -> Workspace:
        """The registry at `path`, else $AMLFS_REGISTRY, else ~/.config/amlfs/datastores.yaml."""
        return cls(Registry.load(path))

    def __repr__(self) -> str:
        return f"Workspace(registry={str(self.registry.path)!r})"

    @property
    def datastores(self) -> DatastoreMap:
        return DatastoreMap(
            (name, Datastore(self, cfg)) for name, cfg in self.registry.datastores.items()
        )

    def get_default_datastore(self) -> Datastore:
        return Datastore(self, self.registry.default_datastore())

    def set_default_datastore(self, name: str) -> None:
        self.registry.set_default(name)
        self.registry.save()


def _check_kwargs(method: str, kwargs: dict, known: Iterable[str]) -> None:
    for key in kwargs:
        close = difflib.get_close_matches(key, list(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"{method}() got an unexpected keyword argument {key!r}{hint}")


class Datastore:
    """One registered datastore. `Datastore(ws, name)` is the same as `Datastore.get(ws, name)`."""

    def __init__(self, workspace: Workspace, name: str | DatastoreConfig):
        self.workspace = workspace
        self.config = name if isinstance(name, DatastoreConfig) else workspace.registry.get(name)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def datastore_type(self) -> str:
        return DATASTORE_TYPES[self.config.type]

    def __repr__(self) -> str:
        return f"Datastore(name={self.name!r}, datastore_type={self.datastore_type!r})"

    # --- registration ----------------------------------------------------------------------

    @staticmethod
    def get(workspace: Workspace, datastore_name: str) -> Datastore:
        return Datastore(workspace, datastore_name)

    @staticmethod
    def _register(
        workspace: Workspace,
        cfg: DatastoreConfig,
        overwrite: bool,
        create_if_not_exists: bool,
        verify: bool = False,
    ) -> Datastore:
        if cfg.name in workspace.registry.datastores and not overwrite:
            # As in Azure ML v1: registering an existing name without overwrite keeps the old one.
            return Datastore(workspace, cfg.name)
        return register_datastore(workspace, cfg, True, create_if_not_exists, verify=verify)

    @staticmethod
    def register_azure_blob_container(
        workspace: Workspace,
        datastore_name: str,
        container_name: str,
        account_name: str,
        sas_token: str | None = None,
        account_key: str | None = None,
        protocol: str | None = None,
        endpoint: str | None = None,
        overwrite: bool = False,
        create_if_not_exists: bool = False,
        skip_validation: bool = False,
        blob_cache_timeout: int | None = None,
        grant_workspace_access: bool = False,
        subscription_id: str | None = None,
        resource_group: str | None = None,
        account_url: str | None = None,
        connection_string: str | None = None,
        **kwargs,
    ) -> Datastore:
        _check_kwargs("register_azure_blob_container", kwargs, [])
        cfg = _azure_config(
            BLOB,
            datastore_name,
            account_name,
            protocol,
            endpoint,
            account_url,
            {"container_name": container_name},
            account_key=account_key,
            sas_token=sas_token,
            connection_string=connection_string,
        )
        return Datastore._register(
            workspace, cfg, overwrite, create_if_not_exists, not skip_validation
        )

    @staticmethod
    def register_azure_file_share(
        workspace: Workspace,
        datastore_name: str,
        file_share_name: str | None = None,
        account_name: str | None = None,
        sas_token: str | None = None,
        account_key: str | None = None,
        protocol: str | None = None,
        endpoint: str | None = None,
        overwrite: bool = False,
        create_if_not_exists: bool = False,
        skip_validation: bool = False,
        container_name: str | None = None,
        account_url: str | None = None,
        connection_string: str | None = None,
        **kwargs,
    ) -> Datastore:
        """`container_name` is accepted for the share name, as the v1 guide passes it."""
        _check_kwargs("register_azure_file_share", kwargs, ["file_share_name"])
        share = file_share_name or container_name
        if not share:
            raise TypeError("register_azure_file_share() needs file_share_name")
        cfg = _azure_config(
            FILE,
            datastore_name,
            account_name,
            protocol,
            endpoint,
            account_url,
            {"file_share_name": share},
            account_key=account_key,
            sas_token=sas_token,
            connection_string=connection_string,
        )
        return Datastore._register(
            workspace, cfg, overwrite, create_if_not_exists, not skip_validation
        )

    @staticmethod
    def register_azure_data_lake_gen2(
        workspace: Workspace,
        datastore_name: str,
        filesystem: str,
        account_name: str,
        tenant_id: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        resource_url: str | None = None,
        authority_url: str | None = None,
        protocol: str | None = None,
        endpoint: str | None = None,
        overwrite: bool = False,
        account_key: str | None = None,
        sas_token: str | None = None,
        account_url: str | None = None,
        create_if_not_exists: bool = False,
        subscription_id: str | None = None,
        resource_group: str | None = None,
        grant_workspace_access: bool = False,
        **kwargs,
    ) -> Datastore:
        _check_kwargs(
            "register_azure_data_lake_gen2",
            kwargs,
            ["tenant_id", "client_id", "client_secret", "filesystem"],
        )
        cfg = _azure_config(
            ADLS,
            datastore_name,
            account_name,
            protocol,
            endpoint,
            account_url,
            {"filesystem": filesystem},
            tenant_id=tenant_id,
            client_id=client_id,
            client_secret=client_secret,
            authority_url=authority_url,
            account_key=account_key,
            sas_token=sas_token,
        )
        return Datastore._register(workspace, cfg, overwrite, create_if_not_exists)

    @staticmethod
    def register_azure_data_lake(
        workspace: Workspace,
        datastore_name: str,
        store_name: str,
        tenant_id: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        **kwargs,
    ) -> Datastore:
        """ADLS Gen1: retired by Azure on 2024-02-29. Kept so that the guide's call explains."""
        _check_kwargs(
            "register_azure_data_lake",
            kwargs,
            ["tenant_id", "client_id", "client_secret", "store_name"],
        )
        raise UsageError(
            "Azure Data Lake Storage Gen1 was retired on 2024-02-29; register the Gen2 account "
            "instead: Datastore.register_azure_data_lake_gen2(workspace=ws, datastore_name="
            f"{datastore_name!r}, filesystem='<filesystem>', account_name='<account>', "
            "tenant_id=..., client_id=..., client_secret=...)"
        )

    @staticmethod
    def register_local(
        workspace: Workspace,
        datastore_name: str,
        path: str,
        overwrite: bool = False,
        create_if_not_exists: bool = False,
    ) -> Datastore:
        """amlfs's own kind: a local directory."""
        cfg = DatastoreConfig(
            name=datastore_name, type=LOCAL, path=os.path.abspath(os.path.expanduser(path))
        )
        return Datastore._register(workspace, cfg, overwrite, create_if_not_exists)

    # --- data ------------------------------------------------------------------------------

    def backend(self) -> Backend:
        return open_backend(self.config)

    def upload(
        self,
        src_dir: str,
        target_path: str | None = None,
        overwrite: bool = False,
        show_progress: bool = True,
    ):
        """Upload the contents of `src_dir` under `target_path` (the root when None)."""
        from .transfer import upload_dir

        if not os.path.isdir(src_dir):
            raise UsageError(f"{src_dir} is not a directory")
        backend = self.backend()
        try:
            result = upload_dir(
                backend,
                src_dir,
                target_path or "",
                overwrite=overwrite,
                show_progress=show_progress,
            )
        finally:
            backend.close()
        return _check(result, "upload")

    def upload_files(
        self,
        files: list[str],
        relative_root: str | None = None,
        target_path: str | None = None,
        overwrite: bool = False,
        show_progress: bool = True,
    ):
        """Upload `files`; with `relative_root`, each keeps its path relative to it."""
        from .transfer import upload_files

        backend = self.backend()
        try:
            result = upload_files(
                backend,
                files,
                relative_root=relative_root,
                target_path=target_path or "",
                overwrite=overwrite,
                show_progress=show_progress,
            )
        finally:
            backend.close()
        return _check(result, "upload")

    def download(
        self,
        target_path: str,
        prefix: str | None = None,
        overwrite: bool = False,
        show_progress: bool = True,
    ) -> int:
        """Download files under `prefix` (a path) to `target_path`, keeping their full remote
        paths, as Azure ML v1 did. Returns the number of files downloaded."""
        from .transfer import download

        backend = self.backend()
        try:
            result = download(
                backend,
                target_path,
                prefix=prefix,
                overwrite=overwrite,
                show_progress=show_progress,
                keep_prefix=True,
            )
        finally:
            backend.close()
        return _check(result, "download").copied

    # --- data references for runs ----------------------------------------------------------

    def path(self, path: str | None = None, data_reference_name: str | None = None):
        """A DataReference to `path` on this datastore (mount mode until told otherwise)."""
        from .datareference import DataReference

        return DataReference(self, data_reference_name, path)

    def as_mount(self, path_on_compute: str | None = None):
        return self.path().as_mount(path_on_compute)

    def as_download(self, path_on_compute: str | None = None, overwrite: bool = False):
        return self.path().as_download(path_on_compute, overwrite)
