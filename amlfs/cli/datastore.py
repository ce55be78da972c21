"""`amlfs datastore ...`: register, create from YAML, list, show, set-default, remove."""

from __future__ import annotations

import os
import sys

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
from .common import AppContext, examples, main, pass_app

TYPE_LABELS = {BLOB: "AzureBlob", FILE: "AzureFile", ADLS: "AzureDataLakeGen2", LOCAL: "Local"}


@main.group(
    epilog=examples(
        "amlfs datastore list",
        "amlfs datastore register blob training --account-name acct --container-name data --sas-token -",
        "amlfs datastore set-default training",
    )
)
def datastore() -> None:
    """Manage the registered datastores."""


@datastore.group(
    epilog=examples(
        "amlfs datastore register local scratch --path /data/scratch --create-if-not-exists",
        "amlfs datastore register blob dev --container-name data --connection-string UseDevelopmentStorage=true",
    )
)
def register() -> None:
    """Register a datastore (blob, file, adls or local)."""


def _credential_options(f):
    for opt in reversed(
        [
            click.option("--account-key", metavar="KEY|-|@FILE", help="Storage account key."),
            click.option(
                "--sas-token",
                metavar="SAS|-|@FILE",
                help="SAS token (a leading '?' is ignored).",
            ),
            click.option(
                "--connection-string",
                metavar="CS|-|@FILE",
                help="Storage connection string. For every secret: '-' reads it from stdin (a "
                "hidden prompt on a terminal), @FILE from a file, keeping it out of shell history "
                "and ps.",
            ),
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


_SECRET_OPTIONS = ("account_key", "sas_token", "connection_string", "client_secret")


def _option_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def _read_secrets(opts: dict) -> None:
    """Replace '-' (stdin, or a hidden prompt on a terminal) and '@FILE' by the secret they
    name, in place. Only one secret can come from stdin."""
    from_stdin = [k for k in _SECRET_OPTIONS if opts.get(k) == "-"]
    if len(from_stdin) > 1:
        names = " and ".join(_option_name(k) for k in from_stdin)
        raise UsageError(f"only one secret can be read from stdin, not {names}: use @FILE")
    for key in _SECRET_OPTIONS:
        value, option = opts.get(key), _option_name(key)
        if value == "-":
            if sys.stdin.isatty():
                value = click.prompt(option.lstrip("-").replace("-", " "), hide_input=True)
            else:
                value = sys.stdin.readline()
        elif value and value.startswith("@"):
            path = os.path.expanduser(value[1:])
            try:
                with open(path, encoding="utf-8") as f:
                    value = f.readline()
            except OSError as e:
                raise UsageError(f"{option} {value}: cannot read {path}: {e.strerror}") from None
        else:
            continue
        value = value.strip()
        if not value:
            raise UsageError(f"{option}: the secret read from {opts[key]} is empty")
        opts[key] = value


def _credentials(opts: dict) -> Credentials:
    """The one credential group given on the command line (key, SAS, connection string or a
    service principal), taken out of `opts`."""
    _read_secrets(opts)
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


def _azure_command(
    kind: str,
    ds_type: str,
    field: str,
    option: str,
    doc: str,
    container_help: str,
    example_lines: tuple[str, ...],
    extra=(),
):
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
            register.command(kind, epilog=examples(*example_lines)),
            click.argument("name"),
            click.option(option, "container", required=True, help=container_help),
            *extra,
            _credential_options,
            _common_options,
        ]
    ):
        command = decorate(command)
    return command


_VERIFY_DOC = (
    "\n\nBefore saving, one listing call checks the credentials and the storage (--no-verify "
    "skips it). A secret given as '-' is read from stdin (a hidden prompt on a terminal), as "
    "@FILE from a file; with no credentials, AZURE_STORAGE_* and DefaultAzureCredential apply."
)
register_blob = _azure_command(
    "blob",
    BLOB,
    "container_name",
    "--container-name",
    "Register an Azure Blob container." + _VERIFY_DOC,
    "The blob container.",
    (
        "amlfs datastore register blob training --account-name acct --container-name data --sas-token -",
        "amlfs datastore register blob dev --container-name data --connection-string UseDevelopmentStorage=true --create-if-not-exists",
    ),
)
register_file = _azure_command(
    "file",
    FILE,
    "file_share_name",
    "--share-name",
    "Register an Azure File share." + _VERIFY_DOC,
    "The file share.",
    (
        "amlfs datastore register file shared --account-name acct --share-name team --account-key @key.txt",
        "amlfs datastore register file shared --account-name acct --share-name team --no-verify",
    ),
)
register_adls = _azure_command(
    "adls",
    ADLS,
    "filesystem",
    "--filesystem",
    "Register an ADLS Gen2 filesystem (service principal, key or SAS)." + _VERIFY_DOC,
    "The ADLS Gen2 filesystem (container).",
    (
        "amlfs datastore register adls lake --account-name acct --filesystem raw --tenant-id T --client-id C --client-secret -",
        "amlfs datastore register adls lake --account-name acct --filesystem raw --sas-token @sas.txt",
    ),
    extra=[
        click.option("--tenant-id", help="Service principal: the Entra ID tenant."),
        click.option("--client-id", help="Service principal: the application (client) id."),
        click.option(
            "--client-secret",
            help="Service principal: its secret ('-': stdin or a hidden prompt; @FILE: a file).",
        ),
        click.option(
            "--authority-url",
            help="Entra ID authority for sovereign clouds (default: login.microsoftonline.com).",
        ),
    ],
)


@register.command(
    "local",
    epilog=examples(
        "amlfs datastore register local scratch --path /data/scratch",
        "amlfs datastore register local scratch --path ~/scratch --create-if-not-exists --default",
    ),
)
@click.argument("name")
@click.option(
    "--path", required=True, type=click.Path(file_okay=False), help="The directory it holds."
)
@click.option("--description", default=None, help="Free text shown by `show`.")
@click.option("--create-if-not-exists", is_flag=True, help="Create the directory if missing.")
@click.option("--default", "make_default", is_flag=True, help="Make it the default.")
@click.option("--overwrite", is_flag=True, help="Replace a datastore of the same name.")
@pass_app
def register_local(
    app: AppContext, name, path, description, create_if_not_exists, make_default, overwrite
):
    """Register a local directory."""
    path = os.path.abspath(os.path.expanduser(path))
    if not create_if_not_exists and not os.path.isdir(path):
        raise UsageError(f"{path} is not a directory (use --create-if-not-exists)")
    ds = DatastoreConfig(name=name, type=LOCAL, description=description, path=path)
    _save(app, ds, overwrite, make_default, create_if_not_exists)


@datastore.command(
    "create",
    epilog=examples(
        "amlfs datastore create -f blob.yml",
        "amlfs datastore create -f blob.yml --name training --default",
    ),
)
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


@datastore.command(
    "list",
    epilog=examples(
        "amlfs datastore list", "amlfs --registry /etc/amlfs/datastores.yaml datastore list"
    ),
)
@pass_app
def list_(app: AppContext):
    """List datastores: name, type, and which is the default."""
    reg = app.registry
    width = max((len(n) for n in reg.datastores), default=4)
    for name, ds in reg.datastores.items():
        mark = "*" if name == reg.default else " "
        click.echo(f"{mark} {name:<{width}}  {TYPE_LABELS.get(ds.type, ds.type)}")


@datastore.command(
    "show",
    epilog=examples("amlfs datastore show training", "amlfs datastore show workspaceblobstore"),
)
@click.argument("name")
@pass_app
def show(app: AppContext, name):
    """Show one datastore (secrets redacted)."""
    reg = app.registry
    data = datastore_to_dict(reg.get(name), redact=True)
    click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
    if name == reg.default:
        click.echo("# the default datastore")


@datastore.command(
    "set-default",
    epilog=examples(
        "amlfs datastore set-default training", "amlfs upload data/ :v1    (goes to training)"
    ),
)
@click.argument("name")
@pass_app
def set_default(app: AppContext, name):
    """Make NAME the default datastore."""
    reg = app.registry
    reg.set_default(name)
    reg.save()
    click.echo(f"default datastore is now '{name}'")


@datastore.command(
    "remove", epilog=examples("amlfs datastore remove old_store", "amlfs datastore list")
)
@click.argument("name")
@pass_app
def remove(app: AppContext, name):
    """Remove NAME from the registry (the data itself is not touched)."""
    reg = app.registry
    reg.remove(name)
    reg.save()
    click.echo(f"removed datastore '{name}' (its data is untouched)")
