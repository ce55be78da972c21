"""`amlfs datastore ...`: register, create from YAML, list, show, set-default, remove."""

from __future__ import annotations

import click
import yaml

from ..errors import UsageError
from ..registry import (
    ADLS,
    BLOB,
    FILE,
    LOCAL,
    Credentials,
    DatastoreConfig,
    datastore_to_dict,
    load_datastore_yaml,
)
from .common import AppContext, main, pass_app

TYPE_LABELS = {BLOB: "AzureBlob", FILE: "AzureFile", ADLS: "AzureDataLakeGen2", LOCAL: "Local"}


@main.group()
def datastore() -> None:
    """Manage the registered datastores."""


@datastore.group()
def register() -> None:
    """Register a datastore (blob, file, adls or local)."""


def _credential_options(f):
    for opt in reversed(
        [
            click.option("--account-key", help="Storage account key."),
            click.option("--sas-token", help="SAS token (a leading '?' is ignored)."),
            click.option("--connection-string", help="Storage connection string."),
        ]
    ):
        f = opt(f)
    return f


def _common_options(f):
    for opt in reversed(
        [
            click.option("--account-name", help="Storage account name."),
            click.option(
                "--account-url",
                help="Explicit endpoint URL (emulators, private endpoints), e.g. "
                "http://127.0.0.1:10000/devstoreaccount1.",
            ),
            click.option(
                "--endpoint",
                default="core.windows.net",
                show_default=True,
                help="DNS suffix of the storage endpoints (sovereign clouds differ).",
            ),
            click.option(
                "--protocol",
                type=click.Choice(["https", "http"]),
                default="https",
                show_default=True,
                help="Scheme of the endpoint built from --account-name and --endpoint.",
            ),
            click.option(
                "--api-version",
                metavar="YYYY-MM-DD",
                help="Storage REST API version to send (default: the SDK's newest), e.g. "
                "2025-01-05 for an Azurite that lacks --skipApiVersionCheck.",
            ),
            click.option("--description", default=None, help="Free text shown by `show`."),
            click.option(
                "--create-if-not-exists", is_flag=True, help="Create the storage if missing."
            ),
            click.option("--default", "make_default", is_flag=True, help="Make it the default."),
            click.option("--overwrite", is_flag=True, help="Replace a datastore of the same name."),
            _verify_option,
        ]
    ):
        f = opt(f)
    return f


_verify_option = click.option(
    "--verify/--no-verify",
    default=True,
    help="List one entry with the credentials before saving (default), or register offline.",
)


def _credentials(opts: dict) -> Credentials:
    """The one credential group given on the command line (key, SAS, connection string or a
    service principal), taken out of `opts`."""
    simple = {k: opts.pop(k, None) for k in ("account_key", "sas_token", "connection_string")}
    sp = {k: opts.pop(k, None) for k in ("tenant_id", "client_id", "client_secret")}
    authority_url = opts.pop("authority_url", None)
    if sum(1 for v in simple.values() if v) > 1:
        raise UsageError("give at most one of --account-key, --sas-token and --connection-string")
    if any(sp.values()):
        if not all(sp.values()):
            raise UsageError(
                "a service principal needs --tenant-id, --client-id and --client-secret"
            )
        if any(simple.values()):
            raise UsageError("give either a service principal or a key/SAS/connection string")
        return Credentials(**sp, authority_url=authority_url)
    if simple["sas_token"]:
        simple["sas_token"] = simple["sas_token"].lstrip("?")
    return Credentials(**simple)


def _save(
    app: AppContext,
    ds: DatastoreConfig,
    overwrite: bool,
    make_default: bool,
    create: bool,
    verify: bool = True,
):
    from ..workspace import Workspace, register_datastore

    app.may_create_registry = True
    reg = app.registry
    existed = reg.path.exists()
    register_datastore(Workspace(reg), ds, overwrite, create, make_default, verify)
    suffix = " (default)" if reg.default == ds.name else ""
    click.echo(f"registered {TYPE_LABELS[ds.type]} datastore '{ds.name}'{suffix} in {reg.path}")
    if not existed:
        click.echo(f"created the registry {reg.path} (it also holds the local workspaceblobstore)")


def _azure_command(kind: str, ds_type: str, field: str, option: str, doc: str, extra=()):
    """One `register KIND` command: NAME, the container/share/filesystem option, credentials."""

    @pass_app
    def command(
        app: AppContext,
        name,
        container,
        create_if_not_exists,
        make_default,
        overwrite,
        verify,
        **opts,
    ):
        creds = _credentials(opts)
        ds = DatastoreConfig(
            name=name, type=ds_type, credentials=creds, **{field: container}, **opts
        )
        _save(app, ds, overwrite, make_default, create_if_not_exists, verify)

    command.__doc__ = doc
    for decorate in reversed(
        [
            register.command(kind),
            click.argument("name"),
            click.option(option, "container", required=True),
            *extra,
            _credential_options,
            _common_options,
        ]
    ):
        command = decorate(command)
    return command


register_blob = _azure_command(
    "blob", BLOB, "container_name", "--container-name", "Register an Azure Blob container."
)
register_file = _azure_command(
    "file", FILE, "file_share_name", "--share-name", "Register an Azure File share."
)
register_adls = _azure_command(
    "adls",
    ADLS,
    "filesystem",
    "--filesystem",
    "Register an ADLS Gen2 filesystem (service principal, key or SAS).",
    extra=[
        click.option("--tenant-id"),
        click.option("--client-id"),
        click.option("--client-secret"),
        click.option("--authority-url"),
    ],
)


@register.command("local")
@click.argument("name")
@click.option("--path", required=True, type=click.Path(file_okay=False))
@click.option("--description", default=None)
@click.option("--create-if-not-exists", is_flag=True, help="Create the directory if missing.")
@click.option("--default", "make_default", is_flag=True, help="Make it the default.")
@click.option("--overwrite", is_flag=True, help="Replace a datastore of the same name.")
@pass_app
def register_local(
    app: AppContext, name, path, description, create_if_not_exists, make_default, overwrite
):
    """Register a local directory."""
    import os

    path = os.path.abspath(os.path.expanduser(path))
    if not create_if_not_exists and not os.path.isdir(path):
        raise UsageError(f"{path} is not a directory (use --create-if-not-exists)")
    ds = DatastoreConfig(name=name, type=LOCAL, description=description, path=path)
    _save(app, ds, overwrite, make_default, create_if_not_exists)


@datastore.command("create")
@click.option(
    "-f",
    "--file",
    "file_",
    required=True,
    type=click.Path(dir_okay=False),
    help="An Azure ML v2 datastore YAML file.",
)
@click.option("--name", default=None, help="Override the name in the file.")
@click.option("--default", "make_default", is_flag=True, help="Make it the default.")
@click.option("--overwrite", is_flag=True, help="Replace a datastore of the same name.")
@_verify_option
@pass_app
def create(app: AppContext, file_, name, make_default, overwrite, verify):
    """Register a datastore from an Azure ML v2 datastore YAML file."""
    ds = load_datastore_yaml(file_)
    if name:
        ds.name = name
    _save(app, ds, overwrite, make_default, create=False, verify=verify)


@datastore.command("list")
@pass_app
def list_(app: AppContext):
    """List datastores: name, type, and which is the default."""
    reg = app.registry
    width = max((len(n) for n in reg.datastores), default=4)
    for name, ds in reg.datastores.items():
        mark = "*" if name == reg.default else " "
        click.echo(f"{mark} {name:<{width}}  {TYPE_LABELS.get(ds.type, ds.type)}")


@datastore.command("show")
@click.argument("name")
@pass_app
def show(app: AppContext, name):
    """Show one datastore (secrets redacted)."""
    reg = app.registry
    data = datastore_to_dict(reg.get(name), redact=True)
    click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
    if name == reg.default:
        click.echo("# the default datastore")


@datastore.command("set-default")
@click.argument("name")
@pass_app
def set_default(app: AppContext, name):
    """Make NAME the default datastore."""
    reg = app.registry
    reg.set_default(name)
    reg.save()
    click.echo(f"default datastore is now '{name}'")


@datastore.command("remove")
@click.argument("name")
@pass_app
def remove(app: AppContext, name):
    """Remove NAME from the registry (the data itself is not touched)."""
    reg = app.registry
    reg.remove(name)
    reg.save()
    click.echo(f"removed datastore '{name}' (its data is untouched)")
