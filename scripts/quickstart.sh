#!/usr/bin/env bash
# The main job on the embedded default datastore: upload a sample directory to it, download it back,
# then mount the datastore read-only and read through the mount.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
amlfs=.venv/bin/amlfs

work=$(mktemp -d /tmp/amlfs-quickstart.XXXXXX)
trap '$amlfs unmount "$work/mnt" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
mkdir -p "$work/sample/images" "$work/back" "$work/mnt"
for i in $(seq 1 20); do head -c $((4096 * i)) /dev/urandom > "$work/sample/images/img_$i.bin"; done
echo "label,file" > "$work/sample/labels.csv"

echo "== datastores"
$amlfs datastore list
echo "== upload sample/ to the default datastore at quickstart/"
$amlfs upload --overwrite --progress "$work/sample" :quickstart
echo "== download it back"
$amlfs download --overwrite --progress :quickstart "$work/back"
diff -r "$work/sample" "$work/back" && echo "round trip: identical"
if $amlfs mount --help >/dev/null 2>&1; then
  echo "== mount the default datastore at $work/mnt and read through it"
  $amlfs mount :quickstart "$work/mnt"
  ls -l "$work/mnt" "$work/mnt/images" | head -8
  diff -r "$work/sample" "$work/mnt" && echo "mounted copy: identical"
  $amlfs stats "$work/mnt" || true
  $amlfs unmount "$work/mnt"
fi
