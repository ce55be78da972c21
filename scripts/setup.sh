#!/usr/bin/env bash
# Installs what amlfs needs on a Debian/Ubuntu machine (idempotent):
#   apt: fuse3, libfuse3-dev, pkg-config, a C compiler, Python >= 3.11 with venv
#   venv: .venv with amlfs installed (editable)
# With --test also: the test tools (pytest & co in the venv, Node.js + the pinned Azurite/azcopy
# from package.json, systemd for `systemd-analyze verify`, rclone/fio/libsecret for benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

have_python() {
  command -v python3 >/dev/null && python3 - <<'PY' 2>/dev/null
import os, sys, sysconfig, venv
assert sys.version_info >= (3, 11)
assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
PY
}
pkgs=(fuse3 libfuse3-dev pkg-config gcc)
# Python and Node may come from elsewhere (pyenv, nodesource): use them when they work.
have_python || pkgs+=(python3 python3-venv python3-dev)
if [[ $want_test -eq 1 ]]; then
  pkgs+=(systemd rclone fio libsecret-1-0 rsync)
  command -v npm >/dev/null || pkgs+=(nodejs npm)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "setup: amlfs needs Python >= 3.11 (found $(python3 --version))" >&2; exit 1; }

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
# Reinstall only when pyproject.toml changed (an editable install picks up code changes itself).
extras=""
[[ $want_test -eq 1 ]] && extras="[test]"
stamp=".venv/.amlfs-installed$extras"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  log=$(mktemp)
  if ! .venv/bin/pip install -q -e ".$extras" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; echo "setup: pip install failed" >&2; exit 1
  fi
  rm -f "$log"
  echo "$want" > "$stamp"
fi
# The man page, generated from the CLI's own help (man amlfs); reinstalled only when it changed.
mandir="${AMLFS_MANDIR:-/usr/local/share/man/man1}"
if .venv/bin/python -m amlfs.cli.manpage > .venv/amlfs.1 && ! cmp -s .venv/amlfs.1 "$mandir/amlfs.1"; then
  $SUDO install -D -m 0644 .venv/amlfs.1 "$mandir/amlfs.1" ||
    echo "setup: could not install the man page in $mandir (read it with: man -l .venv/amlfs.1)" >&2
fi
if [[ $want_test -eq 1 ]]; then
  if [[ ! -x node_modules/.bin/azurite-blob ]] || [[ "$(node -p 'require("./node_modules/azurite/package.json").version' 2>/dev/null)" != "$(node -p 'require("./package.json").devDependencies.azurite')" ]]; then
    # Quiet unless it fails: no "added N packages", no "npm notice" about npm's own updates.
    log=$(mktemp)
    if ! NPM_CONFIG_UPDATE_NOTIFIER=false npm ci --no-audit --no-fund --no-update-notifier \
        --loglevel=error >"$log" 2>&1; then
      cat "$log" >&2; rm -f "$log"; echo "setup: npm ci failed" >&2; exit 1
    fi
    rm -f "$log"
  fi
fi
