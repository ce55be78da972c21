"""Publishing and unpublishing volumes on this node: one amlfs mount daemon per target path.

The daemons do not live and die with the gRPC server. Each is started through `setsid -f`, so
it runs in its own session and is re-parented away from the plugin at once (a new session's
leader whose parent has exited): killing or restarting the plugin leaves every mount serving. What
a restarted plugin needs to find them is in the state directory (state.py); it adopts each live
mount it recorded, and a mount whose daemon died (the kernel answers ENOTCONN) is unmounted and
mounted again by the next publish of its target (kubelet republishes periodically when the
CSIDriver sets requiresRepublish).

Publish and unpublish are idempotent and serialised per target path; calls for different targets
run in parallel (the gRPC server's thread pool). Every wait is bounded: the daemon start by
`start_timeout`, a liveness check by `probe_timeout`, an unmount by control.unmount's bound.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
from contextlib import suppress
from dataclasses import replace
from pathlib import Path

from ..backends import BackendError, Forbidden, NotFound
from ..errors import AmlfsError, UsageError
from ..fs import control
from ..registry import Registry
from .state import Record, StateDir, write_private
from .volume import (
    ALREADY_EXISTS,
    FAILED_PRECONDITION,
    INTERNAL,
    INVALID_ARGUMENT,
    NOT_FOUND,
    PERMISSION_DENIED,
    RESOURCE_EXHAUSTED,
    UNAVAILABLE,
    VolumeError,
    VolumeSpec,
)

log = logging.getLogger(__name__)

# What the daemons inherit from the plugin's environment: nothing that names a credential, so
# that a volume authenticates only as its own request says.
_ENV_DROP_PREFIXES = ("AZURE_", "AMLFS_")
STORAGE_SCOPE = "https://storage.azure.com/.default"


class Node:
    def __init__(
        self,
        state_dir: str,
        node_id: str,
        registry_path: str | None = None,
        start_timeout: float = 60.0,
        probe_timeout: float = 5.0,
        cache_budget: int | None = None,
    ):
        self.state = StateDir(state_dir)
        self.node_id = node_id
        self.registry_path = registry_path
        self.start_timeout = start_timeout
        self.probe_timeout = probe_timeout
        self.cache_budget = cache_budget  # all daemons' caches together; None: no limit
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # --- start-up ------------------------------------------------------------------------------

    def adopt(self) -> dict[str, int]:
        """Look at every recorded volume after a (re)start: count live, dead and gone mounts.
        Live ones are adopted as they are; dead ones are repaired by their next publish."""
        counts = {"live": 0, "dead": 0, "gone": 0}
        for rec in self.state.records():
            entry = control.find_mount(rec.target_path)
            if entry is None:
                counts["gone"] += 1
                log.info("volume %s: no mount at %s any more", rec.volume_id, rec.target_path)
                continue
            state = self._daemon_state(rec.target_path)
            counts["live" if state == "live" else "dead"] += 1
            log.info("volume %s at %s: adopted, daemon %s", rec.volume_id, rec.target_path, state)
        return counts

    # --- publish -------------------------------------------------------------------------------

    def publish(self, spec: VolumeSpec) -> str:
        """Mount `spec` at its target (or find it mounted). Returns what was done: "mounted",
        "present" (already published: secrets refreshed) or "repaired" (its daemon had died)."""
        target = _check_target_path(spec.target_path)
        with self._lock(target):
            rec = self.state.load(target)
            entry = control.find_mount(target, any_type=True)
            repaired = False
            if entry is not None:
                if entry.fstype != control.FSTYPE:
                    raise VolumeError(
                        FAILED_PRECONDITION, f"target {target} is already a mount ({entry.fstype})"
                    )
                if rec is not None and rec.fingerprint != spec.fingerprint:
                    raise VolumeError(
                        ALREADY_EXISTS,
                        f"target {target} already holds volume {rec.volume_id} published with"
                        " other attributes",
                    )
                if rec is None and entry.source != f"{spec.datastore.name}:{spec.path}":
                    raise VolumeError(
                        ALREADY_EXISTS,
                        f"target {target} is already an amlfs mount of another volume",
                    )
                if self._daemon_state(target) == "live":
                    self._write_secrets(spec)  # refreshed credentials (tokens) on republish
                    if rec is None:  # a mount made before our state was lost: adopt it
                        self.state.save(self._record(spec, None))
                    return "present"
                log.warning(
                    "volume %s: the daemon of %s is dead; remounting", spec.volume_id, target
                )
                self._unmount(target, lazy=True)
                repaired = True
            self._check_budget(spec, target)
            created = self._prepare_target(target)
            try:
                self._write_secrets(spec)
                self.state.save(self._record(spec, None))
                self._check_source(spec)
                pid = self._start(spec)
            except BaseException:
                # Nothing is mounted: leave no credential, record or directory behind.
                if control.find_mount(target) is None:
                    self.state.remove(target)
                    if created:
                        with suppress(OSError):
                            os.rmdir(target)
                raise
            self.state.save(self._record(spec, pid))
            return "repaired" if repaired else "mounted"

    def _record(self, spec: VolumeSpec, pid: int | None) -> Record:
        return Record(
            volume_id=spec.volume_id,
            target_path=os.path.normpath(spec.target_path),
            fingerprint=spec.fingerprint,
            datastore=spec.datastore.name,
            path=spec.path,
            pid=pid,
            cache_bytes=spec.config.cache_bytes,
        )

    def _check_budget(self, spec: VolumeSpec, target: str) -> None:
        """Refuse a mount whose cache does not fit in what the other mounts leave of the budget:
        the daemons share the plugin container's memory limit, which would OOM-kill them."""
        if self.cache_budget is None:
            return
        used = sum(r.cache_bytes for r in self.state.records() if r.target_path != target)
        if used + spec.config.cache_bytes > self.cache_budget:
            from ..units import human

            raise VolumeError(
                RESOURCE_EXHAUSTED,
                f"cache_size {human(spec.config.cache_bytes)} does not fit: this node's mounts"
                f" hold {human(used)} of its {human(self.cache_budget)} cache budget",
            )

    def _write_secrets(self, spec: VolumeSpec) -> None:
        d = self.state.prepare(spec.target_path)
        reg = Registry(
            d / "registry.yaml", {spec.datastore.name: spec.datastore}, spec.datastore.name
        )
        reg.save()  # atomic, 0600
        if spec.identity is not None:
            write_private(d / "token", spec.identity.token.encode())

    def _check_source(self, spec: VolumeSpec) -> None:
        """Authenticate and look up the path here, so that the failure gets its CSI code (the
        daemon would only say it in words). A workload identity's token is exchanged here once,
        so that a refused token is PERMISSION_DENIED; its storage access is checked by the
        daemon."""
        if spec.identity is not None:
            self._check_identity(spec)
            return
        from ..backends import open_backend
        from ..fs.daemon import check_source

        try:
            backend = open_backend(spec.datastore)
        except UsageError as e:
            raise VolumeError(INVALID_ARGUMENT, str(e)) from None
        try:
            check_source(backend, spec.datastore, spec.path, create=not spec.readonly)
        except Forbidden as e:
            raise VolumeError(PERMISSION_DENIED, str(e)) from None
        except NotFound as e:
            raise VolumeError(NOT_FOUND, str(e)) from None
        except UsageError as e:
            code = NOT_FOUND if "does not exist" in str(e) else INVALID_ARGUMENT
            raise VolumeError(code, str(e)) from None
        except BackendError as e:
            raise VolumeError(UNAVAILABLE, str(e)) from None
        finally:
            backend.close()

    def _check_identity(self, spec: VolumeSpec) -> None:
        from azure.core.exceptions import ClientAuthenticationError

        from ..credentials import workload_identity_credential

        d = self.state.dir_for(spec.target_path)
        credential = workload_identity_credential(self._daemon_env(spec, d))
        try:
            credential.get_token(STORAGE_SCOPE)
        except ClientAuthenticationError as e:
            first = (str(e).strip().splitlines() or ["refused"])[0]
            raise VolumeError(
                PERMISSION_DENIED, f"Azure AD refused the workload identity token: {first}"
            ) from None
        except ValueError as e:  # a malformed authority host, tenant...
            raise VolumeError(INVALID_ARGUMENT, f"workload identity: {e}") from None
        finally:
            credential.close()

    def _daemon_env(self, spec: VolumeSpec, d: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_DROP_PREFIXES)}
        if spec.identity is not None:
            # azure-identity's WorkloadIdentityCredential (in DefaultAzureCredential) reads these
            # and re-reads the token file, which a republish rewrites before it expires.
            env["AZURE_CLIENT_ID"] = spec.identity.client_id
            env["AZURE_TENANT_ID"] = spec.identity.tenant_id
            env["AZURE_FEDERATED_TOKEN_FILE"] = str(d / "token")
            if spec.identity.authority_host:
                env["AZURE_AUTHORITY_HOST"] = spec.identity.authority_host
        return env

    def _start(self, spec: VolumeSpec) -> int | None:
        d = self.state.dir_for(spec.target_path)
        target = os.path.normpath(spec.target_path)
        argv = [sys.executable, "-m", "amlfs", "--registry", str(d / "registry.yaml")]
        argv += ["mount", "--foreground", "--config-stdin", "--"]
        argv += [f"{spec.datastore.name}:{spec.path}", target]
        setsid = shutil.which("setsid")
        if setsid:  # fork into a new session: the daemon is not our child
            argv = [setsid, "-f", *argv]
        try:
            control.start_background(
                argv,
                target,
                str(d / "daemon.log"),
                timeout=self.start_timeout,
                stdin=replace(spec.config, log_file=str(d / "daemon.log")).to_json().encode(),
                env=self._daemon_env(spec, d),
            )
        except UsageError as e:
            raise VolumeError(INVALID_ARGUMENT, str(e)) from None
        except AmlfsError as e:
            code = PERMISSION_DENIED if _looks_like_auth(str(e)) else INTERNAL
            raise VolumeError(code, str(e)) from None
        try:
            pid = control.read_facts(target, timeout=self.probe_timeout).get("pid")
        except AmlfsError:
            pid = None
        log.info("volume %s: mounted at %s (daemon pid %s)", spec.volume_id, target, pid)
        return pid if isinstance(pid, int) else None

    # --- unpublish -----------------------------------------------------------------------------

    def unpublish(self, volume_id: str, target_path: str) -> str:
        """Unmount the target and remove it; "absent" when there was nothing to do."""
        if not volume_id:
            raise VolumeError(INVALID_ARGUMENT, "volume_id is required")
        target = _check_target_path(target_path)
        with self._lock(target):
            entry = control.find_mount(target)
            if entry is not None:
                self._unmount(target, lazy=False)
            existed = os.path.lexists(target)
            if existed:
                try:
                    os.rmdir(target)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    raise VolumeError(INTERNAL, f"cannot remove {target}: {e.strerror}") from None
            self.state.remove(target)
            return "unmounted" if entry is not None else ("removed" if existed else "absent")

    def _unmount(self, target: str, lazy: bool) -> None:
        try:
            control.unmount(target, lazy=lazy)
        except AmlfsError as e:
            if lazy:
                raise VolumeError(INTERNAL, str(e)) from None
            # Busy (a process still has a file open): detach it now, as kubelet expects.
            log.warning("%s; detaching it lazily", e)
            try:
                control.unmount(target, lazy=True)
            except AmlfsError as e2:
                raise VolumeError(INTERNAL, str(e2)) from None

    # --- helpers -------------------------------------------------------------------------------

    def _daemon_state(self, target: str) -> str:
        try:
            control.read_facts(target, timeout=self.probe_timeout)
            return "live"
        except AmlfsError as e:
            return "dead" if "dead" in str(e) else "unresponsive"

    def _prepare_target(self, target: str) -> bool:
        """Make sure `target` is an empty directory; True if it was created here."""
        try:
            os.mkdir(target, 0o750)
            return True
        except FileExistsError:
            if not os.path.isdir(target):
                raise VolumeError(INVALID_ARGUMENT, f"target {target} is not a directory") from None
            with os.scandir(target) as it:
                if next(it, None) is not None:
                    raise VolumeError(
                        FAILED_PRECONDITION, f"target {target} is not empty"
                    ) from None
            return False
        except FileNotFoundError:
            raise VolumeError(
                NOT_FOUND, f"the parent directory of target {target} does not exist"
            ) from None
        except OSError as e:
            raise VolumeError(INTERNAL, f"cannot create target {target}: {e.strerror}") from None

    def _lock(self, target: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(target, threading.Lock())


def _check_target_path(path: str) -> str:
    if not path:
        raise VolumeError(INVALID_ARGUMENT, "target_path is required")
    if not os.path.isabs(path):
        raise VolumeError(INVALID_ARGUMENT, f"target_path {path!r} must be absolute")
    return os.path.normpath(path)


def _looks_like_auth(message: str) -> bool:
    m = message.lower()
    return any(w in m for w in ("authoriz", "authentic", "forbidden", "permission", "aadsts"))
