#!/usr/bin/env bash
# Install what ddc-testbed needs on Debian 12 (as root): QEMU, libvirt, image
# tools, build tools; then make sure libvirtd answers. Safe to run again.
set -euo pipefail

PACKAGES=(
  qemu-system-x86 qemu-utils qemu-user            # blades; qemu-user runs plugin unit tests
  libvirt-daemon-system libvirt-dev pkg-config    # engine; libvirt-python builds against libvirt-dev
  mmdebstrap e2fsprogs cpio zstd                  # guest images
  openssh-client                                  # `ddc ssh`
  gcc make dpkg-dev libglib2.0-dev                # the plugin and the probes
  sysbench                                        # bench/plugin_overhead.py runs it in a bare guest
  python3-venv
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "+ apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# /dev/kvm as Debian's udev rule leaves it (root:kvm 0660). A machine without
# udev (a container, some CI runners) has it root:root 0600; libvirtd then
# finds on every capabilities lookup that "KVM was enabled when probing QEMU,
# but it is not available now" and probes QEMU again, about 40 times per
# `ddc up` (184 s instead of 11 s measured).
if [ -c /dev/kvm ]; then
  getent group kvm >/dev/null || groupadd --system kvm
  if [ "$(stat -c %G:%a /dev/kvm)" != "kvm:660" ]; then
    echo "+ chgrp kvm /dev/kvm; chmod 660 /dev/kvm"
    chgrp kvm /dev/kvm
    chmod 660 /dev/kvm
  fi
fi

exec "$(dirname "$0")/start-libvirtd.sh"
