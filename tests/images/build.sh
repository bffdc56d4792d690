#!/usr/bin/env bash
# Builds tether-test:busybox, the image the docker tests run, without any registry:
# a root filesystem holding Debian's static busybox and one symlink per applet,
# tarred and `docker import`ed. Idempotent: the image carries a label with the hash
# of this script and of the busybox binary, and is rebuilt only when that changes.
# Prints the tag on stdout; everything else goes to stderr.
set -euo pipefail

TAG="${TETHER_TEST_IMAGE:-tether-test:busybox}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD_DIR="$HERE/build"
INPUTS_LABEL="tether.test-image.inputs"

log() { printf 'build.sh: %s\n' "$*" >&2; }

# Debian's busybox-static ships /bin/busybox; on merged-/usr hosts it is also /usr/bin/busybox.
BUSYBOX=""
for candidate in /bin/busybox /usr/bin/busybox; do
    if [[ -x "$candidate" ]]; then BUSYBOX="$candidate"; break; fi
done
if [[ -z "$BUSYBOX" ]]; then
    log "no busybox found; install it with: apt-get install -y busybox-static"
    exit 1
fi
# A dynamically linked busybox (Debian's "busybox" package) would need a libc in the image.
if command -v ldd >/dev/null 2>&1 && ldd "$BUSYBOX" 2>/dev/null | grep -q '=>'; then
    log "$BUSYBOX is dynamically linked; install the static one: apt-get install -y busybox-static"
    exit 1
fi

inputs_hash="$(cat "${BASH_SOURCE[0]}" "$BUSYBOX" | sha256sum | cut -c1-64)"
current_hash="$(docker image inspect --format "{{ index .Config.Labels \"$INPUTS_LABEL\" }}" "$TAG" 2>/dev/null || true)"
if [[ "$current_hash" == "$inputs_hash" ]]; then
    log "$TAG is up to date"
    echo "$TAG"
    exit 0
fi

log "building $TAG from $BUSYBOX"
mkdir -p "$BUILD_DIR"
work="$(mktemp -d "$BUILD_DIR/busybox.XXXXXX")"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"

mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,root,workspace,proc,sys,dev,var/tmp}
install -m 0755 "$BUSYBOX" "$rootfs/bin/busybox"
# `busybox --list-full` gives each applet's canonical path (bin/ls, usr/bin/env, ...),
# so scripts with `#!/usr/bin/env sh` work; fall back to /bin for older builds.
if applets="$("$BUSYBOX" --list-full 2>/dev/null)"; then :; else
    applets="$("$BUSYBOX" --list | sed 's|^|bin/|')"
fi
while IFS= read -r applet_path; do
    [[ -z "$applet_path" || "$applet_path" == "bin/busybox" ]] && continue
    mkdir -p "$rootfs/$(dirname "$applet_path")"
    ln -sf /bin/busybox "$rootfs/$applet_path"
done <<<"$applets"
ln -sf /bin/busybox "$rootfs/bin/sh"

cat >"$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat >"$rootfs/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
install -d -m 1777 "$rootfs/tmp"
chmod 1777 "$rootfs/var/tmp"
chmod 0700 "$rootfs/root"
chmod 0755 "$rootfs/workspace"

tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -cf "$work/rootfs.tar" .
docker import \
    --change 'CMD ["/bin/sh"]' \
    --change 'WORKDIR /workspace' \
    --change "LABEL $INPUTS_LABEL=$inputs_hash" \
    "$work/rootfs.tar" "$TAG" >/dev/null
log "built $TAG"
echo "$TAG"
