#!/bin/busybox sh
# init of umlkit's minimal image: mount the kernel filesystems, set the
# hostname (hostname=NAME on the kernel command line, else "uml"), run
# /etc/rc.local, announce readiness on the console, then keep a shell there.
# "poweroff -f" (or "halt -f") in the guest ends the instance.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root
mount -t proc proc /proc
mount -o remount,rw /
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
name=uml
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	hostname=*) name="${arg#hostname=}" ;;
	esac
done
hostname "$name"
ip link set lo up 2>/dev/null
if [ -x /etc/rc.local ]; then
	/etc/rc.local
fi
echo "umlkit-ready $(hostname)"
# Tells umlkit the guest is up (the file exists when the kernel was given
# mconsole=notify:, as umlkit vm start does).
echo "umlkit-ready $(hostname)" > /proc/mconsole 2>/dev/null
trap 'poweroff -f' USR2 TERM
while :; do
	setsid cttyhack sh -l
done
