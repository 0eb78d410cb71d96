#!/bin/sh
# Fetch include/qemu/qemu-plugin.h for the QEMU that is INSTALLED on this host.
#
# The plugin API header ships only in Debian's qemu source package, and a
# plugin built against another version's header is refused by QEMU at load time
# (or, worse, loads with a silently different ABI).  So we download the source
# package whose version dpkg records as the origin of qemu-system-x86, cache it
# in $BUILD, and extract just the header (with Debian's patches applied to it).
#
# usage: fetch-plugin-header.sh BUILD_DIR
set -eu

BUILD=${1:?usage: $0 BUILD_DIR}
HDR="$BUILD/include/qemu-plugin.h"
STAMP="$BUILD/include/qemu-plugin.h.version"

die() { echo "fetch-plugin-header: $*" >&2; exit 1; }

command -v dpkg-query >/dev/null || die "dpkg-query not found (this build expects a Debian host)"
SRC_PKG=$(dpkg-query -W -f='${source:Package}' qemu-system-x86 2>/dev/null) \
    || die "qemu-system-x86 is not installed; apt-get install qemu-system-x86"
SRC_VER=$(dpkg-query -W -f='${source:Version}' qemu-system-x86)
BIN_VER=$(dpkg-query -W -f='${Version}' qemu-system-x86)
[ "$SRC_PKG" = qemu ] || die "qemu-system-x86 comes from source '$SRC_PKG', expected 'qemu'"

# Cross-check dpkg against the binary that will actually load the plugin.
QEMU_BIN=${QEMU_SYSTEM:-qemu-system-x86_64}
if command -v "$QEMU_BIN" >/dev/null; then
    "$QEMU_BIN" --version | head -n1 | grep -qF "(Debian $BIN_VER)" \
        || die "$QEMU_BIN --version does not report Debian $BIN_VER: $("$QEMU_BIN" --version | head -n1)"
fi

if [ -f "$HDR" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$SRC_VER" ]; then
    exit 0
fi

UPSTREAM=${SRC_VER#*:}          # drop the epoch
UPSTREAM=${UPSTREAM%-*}         # drop the Debian revision
DSC_VER=${SRC_VER#*:}
DSC="$BUILD/src/qemu_${DSC_VER}.dsc"

if [ ! -f "$DSC" ]; then
    [ "$(id -u)" = 0 ] || die "the qemu $SRC_VER source is not cached in $BUILD/src; run once as root (it adds a deb-src entry and runs apt-get source)"
    if ! apt-get source --download-only --print-uris "qemu=$SRC_VER" >/dev/null 2>&1; then
        # No deb-src for this version yet: mirror each 'Types: deb' stanza of
        # debian.sources as a deb-src stanza, in our own file.
        LIST=/etc/apt/sources.list.d/ddc-deb-src.sources
        if [ ! -f "$LIST" ]; then
            [ -f /etc/apt/sources.list.d/debian.sources ] \
                || die "no /etc/apt/sources.list.d/debian.sources to derive a deb-src entry from"
            sed 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$LIST.tmp"
            mv "$LIST.tmp" "$LIST"
            echo "fetch-plugin-header: added $LIST" >&2
        fi
        apt-get update -qq || die "apt-get update failed"
    fi
    mkdir -p "$BUILD/src"
    (cd "$BUILD/src" && apt-get source --download-only -qq "qemu=$SRC_VER") \
        || die "apt-get source --download-only qemu=$SRC_VER failed (is that version still on the mirror?)"
fi
[ -f "$DSC" ] || die "expected $DSC after apt-get source"

# dpkg-source would unpack the whole tree (hundreds of MB); we take only the
# header from the orig tarball and apply any Debian patch that touches it.
ORIG=$(ls "$BUILD/src"/qemu_"$UPSTREAM".orig.tar.* | head -n1)
DEBTAR=$(ls "$BUILD/src"/qemu_"$DSC_VER".debian.tar.* | head -n1)
WORK="$BUILD/src/hdr.$$"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/tree"
MEMBER=$(tar -tf "$ORIG" | grep -m1 '^[^/]*/include/qemu/qemu-plugin\.h$') \
    || die "no include/qemu/qemu-plugin.h in $ORIG"
tar -xf "$ORIG" -C "$WORK/tree" --strip-components=1 "$MEMBER"
tar -xf "$DEBTAR" -C "$WORK" debian/patches
if [ -f "$WORK/debian/patches/series" ]; then
    grep -v '^[[:space:]]*#' "$WORK/debian/patches/series" | while read -r p opts; do
        [ -n "$p" ] || continue
        if grep -q '^+++ [^ ]*include/qemu/qemu-plugin\.h' "$WORK/debian/patches/$p"; then
            # Only the header exists in our tree, so patch just that file.
            awk '
                /^diff --git /      { keep = 0; next }
                /^--- /             { hdr = $0; plus = 1; next }
                plus && /^\+\+\+ / { keep = ($0 ~ /include\/qemu\/qemu-plugin\.h/)
                                      if (keep) { print hdr; print }
                                      plus = 0; next }
                                    { plus = 0; if (keep) print }
            ' "$WORK/debian/patches/$p" > "$WORK/one.diff"
            patch -s -p1 -d "$WORK/tree" ${opts:-} < "$WORK/one.diff" \
                || die "Debian patch $p does not apply to qemu-plugin.h"
            echo "fetch-plugin-header: applied $p" >&2
        fi
    done
fi

grep -q 'QEMU_PLUGIN_VERSION' "$WORK/tree/include/qemu/qemu-plugin.h" \
    || die "extracted header does not define QEMU_PLUGIN_VERSION"
mkdir -p "$BUILD/include"
cp "$WORK/tree/include/qemu/qemu-plugin.h" "$HDR"
echo "$SRC_VER" > "$STAMP"
echo "fetch-plugin-header: qemu-plugin.h from qemu $SRC_VER" >&2
