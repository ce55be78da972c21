"""The root command group, its global options, and the one place CLI errors become exit codes."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import click

from ..backends.base import Backend, BackendError
from ..errors import AmlfsError
from ..registry import DatastoreConfig, Registry

log = logging.getLogger("amlfs")


@dataclass
class AppContext:
    registry_path: str | None
    debug: bool
    _registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
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


class AmlfsGroup(click.Group):
    """Turns every expected failure into one line on stderr and an exit code: 1 for runtime
    failures, 2 for bad usage or a bad registry. Tracebacks only with --debug."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (AmlfsError, BackendError) as e:
            code = e.exit_code if isinstance(e, AmlfsError) else 1
            debug = isinstance(ctx.obj, AppContext) and ctx.obj.debug
            if debug:
                log.exception("failed")
            hint = getattr(e, "hint", "")  # BackendError: what to do about it
            click.echo(f"amlfs: error: {e}" + (f"; {hint}" if hint else ""), err=True)
            sys.exit(code)
        except KeyboardInterrupt:
            click.echo("amlfs: interrupted", err=True)
            sys.exit(130)


@click.group(cls=AmlfsGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    """amlfs: Azure ML datastores as local directories (mount, stage, upload, download, run)."""
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
