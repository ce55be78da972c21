"""The root command group, its global options, and the one place CLI errors become exit codes."""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass

import click

from ..backends.base import Backend
from ..backends.errors import BackendError, NotFound
from ..errors import AmlfsError, RegistryError
from ..registry import DatastoreConfig, Registry, resolve_registry_path

log = logging.getLogger("amlfs")


@dataclass
class AppContext:
    registry_path: str | None  # --registry or $AMLFS_REGISTRY; None: the default path
    debug: bool
    _registry: Registry | None = None
    #: set by the commands that create a missing registry (register, create)
    may_create_registry: bool = False

    @property
    def registry(self) -> Registry:
        """The registry. A path named by --registry or $AMLFS_REGISTRY must exist (a typo must
        not silently give an empty registry), except for the commands that create it."""
        if self._registry is None:
            if self.registry_path and not self.may_create_registry:
                path = resolve_registry_path(self.registry_path)
                if not path.exists():
                    raise RegistryError(
                        f"registry {path} does not exist: check --registry/$AMLFS_REGISTRY, or"
                        " create it with `amlfs datastore register` or `amlfs datastore create`"
                    )
            self._registry = Registry.load(self.registry_path)
        return self._registry

    def location(self, spec: str) -> tuple[DatastoreConfig, str]:
        """Resolve `DATASTORE[:PATH]`, `:PATH` or `azureml://...` to a datastore and a path."""
        from ..uri import parse_location

        loc = parse_location(spec)
        ds = (
            self.registry.get(loc.datastore) if loc.datastore else self.registry.default_datastore()
        )
        return ds, loc.path

    def backend(self, ds: DatastoreConfig) -> Backend:
        from ..backends import open_backend

        return open_backend(ds)


#: the sibling module that defines each command: a command imports only its own module when it
#: runs (`amlfs stage` never loads the FUSE layer, the run machinery or the CSI server)
COMMAND_MODULES = {
    "cache": "cache",
    "cat": "browse",
    "csi": "csi",
    "datastore": "datastore",
    "download": "transfer",
    "logs": "logs",
    "ls": "browse",
    "manifest": "manifest",
    "mount": "mount",
    "mounts": "mount",
    "rm": "browse",
    "run": "run",
    "stage": "stage",
    "stats": "mount",
    "unmount": "mount",
    "upload": "transfer",
}


class AmlfsGroup(click.Group):
    """Turns every expected failure into one line on stderr and an exit code, the one rule for
    every command: 0 success; 1 a runtime failure (auth, network, a service error, some files
    failed); 2 bad usage: a bad option or location, an unknown datastore, a bad or missing
    registry, a path that does not exist (in the datastore or on this machine). Tracebacks only
    with --debug.

    Commands are loaded on first use from the module COMMAND_MODULES names (importing it
    registers them on `main`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMAND_MODULES) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(f"{__package__}.{module}")
        return super().get_command(ctx, cmd_name)

    def load_all(self) -> None:
        """Register every command (for the man page and other whole-CLI views)."""
        for module in sorted(set(COMMAND_MODULES.values())):
            importlib.import_module(f"{__package__}.{module}")

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (AmlfsError, BackendError) as e:
            if isinstance(e, AmlfsError):
                code = e.exit_code
            else:
                code = 2 if isinstance(e, NotFound) else 1
            debug = isinstance(ctx.obj, AppContext) and ctx.obj.debug
            if debug:
                log.exception("failed")
            hint = getattr(e, "hint", "")  # BackendError: what to do about it
            click.echo(f"amlfs: error: {e}" + (f"; {hint}" if hint else ""), err=True)
            sys.exit(code)
        except KeyboardInterrupt:
            click.echo("amlfs: interrupted", err=True)
            sys.exit(130)


@click.group(
    cls=AmlfsGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="\b\nExamples:\n"
    "  amlfs upload data/ :datasets/v1\n"
    "  amlfs mount training:images /mnt/images\n"
    "  amlfs COMMAND --help    (man amlfs for everything)",
)
@click.option(
    "--registry",
    "registry_path",
    metavar="PATH",
    envvar="AMLFS_REGISTRY",
    help="Registry file (default: $AMLFS_REGISTRY, else ~/.config/amlfs/datastores.yaml).",
)
@click.option("--debug", is_flag=True, help="Verbose logging and tracebacks.")
@click.version_option(package_name="amlfs")
@click.pass_context
def main(ctx: click.Context, registry_path: str | None, debug: bool) -> None:
    """amlfs: Azure ML datastores as local directories (mount, stage, upload, download, run).

    A location is DATASTORE[:PATH], :PATH (the default datastore) or
    azureml://datastores/NAME/paths/PATH. Exit status: 0 success, 1 a runtime failure, 2 bad
    usage (including a path that does not exist). Shell completion for bash:
    eval "$(_AMLFS_COMPLETE=bash_source amlfs)" (zsh_source, fish_source for the others).
    """
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not debug:
        # The Azure SDK logs every HTTP request at INFO; keep it quiet unless debugging.
        logging.getLogger("azure").setLevel(logging.WARNING)
        # A refused token is reported in one line by the command; azure-identity would log it
        # again with a traceback.
        logging.getLogger("azure.identity").setLevel(logging.ERROR)
    ctx.obj = AppContext(registry_path=registry_path, debug=debug)


pass_app = click.make_pass_decorator(AppContext)


def examples(*lines: str) -> str:
    """A command's epilog: the examples that end its --help (kept as written, not rewrapped)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
