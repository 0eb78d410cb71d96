#!/usr/bin/env bash
# Make sure the system libvirtd answers on qemu:///system; start it if not.
set -euo pipefail

answers() { virsh -c qemu:///system version >/dev/null 2>&1; }

answers && exit 0
if [ -d /run/systemd/system ]; then
  echo "+ systemctl start virtlogd libvirtd"
  systemctl start virtlogd libvirtd
else
  # No systemd (containers, CI): run the daemons by hand.
  echo "+ virtlogd -d; libvirtd -d"
  pgrep -x virtlogd >/dev/null || virtlogd -d
  pgrep -x libvirtd >/dev/null || libvirtd -d
fi
for _ in $(seq 50); do answers && exit 0; sleep 0.2; done
echo "libvirtd did not answer on qemu:///system; see /var/log/libvirt/" >&2
exit 1
