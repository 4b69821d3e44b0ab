#!/usr/bin/env bash
# Builds a small image from Debian's busybox-static, with no registry: a
# rootfs holding /bin/busybox and a link per applet, `docker import`ed as
# shoal-test/busybox:1 (or the tag given). The container tests and the
# benchmarks run it; it is also what the README's container example uses.
#
#   bash scripts/busybox-image.sh [TAG]
#
# Needs a Docker Engine and a static busybox (apt-get install busybox-static).
set -euo pipefail
tag=${1:-shoal-test/busybox:1}
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi
busybox=$(command -v busybox || true)
if [[ -z "$busybox" ]] || ! "$busybox" --list >/dev/null 2>&1; then
  echo "no busybox found: apt-get install busybox-static" >&2
  exit 1
fi
if ldd "$busybox" >/dev/null 2>&1; then
  echo "$busybox is dynamically linked; a container needs busybox-static" >&2
  exit 1
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/proc" "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [[ "$applet" == busybox ]] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/bin' \
  --change 'CMD ["sh"]' \
  - "$tag" >/dev/null
echo "$tag"
