#!/usr/bin/env bash
# Boots a throw-away qemu VM with a Debian cloud kernel that has ip_vs, and
# runs pkg/proxier/ipvs's `ipvsvm` tests in it as the payload of /init.
#
#   hack/ipvs-vm/run.sh CACHE_DIR
#
# CACHE_DIR keeps the kernel .deb and its extracted tree between runs (about
# 140 MB); everything else is rebuilt each time under CACHE_DIR/run.
# Needs: apt-get (with `apt-get update` done), dpkg-deb, qemu-system-x86_64,
# busybox (static), cpio, gzip, go. No KVM needed: TCG is used.
#
# Environment:
#   IPVS_VM_KERNEL_PKG  kernel package to use (default: what
#                       linux-image-cloud-amd64 depends on)
#   IPVS_VM_RUN         -test.run pattern (default ^TestVM)
#   IPVS_VM_TIMEOUT     seconds before the VM is killed (default 300)
#   IPVS_VM_ARGS        more arguments for the test binary, e.g.
#                       "-test.bench=VMCheckCost -test.benchtime=5x"
#   IPVS_VM_MEM         the VM's memory in MiB (default 512)
#
# Exit status: the test binary's inside the VM; 2 when the kernel cannot be
# had or a tool is missing; 3 when the VM gave no result (crash, timeout).
set -euo pipefail

say() { echo "ipvs-vm: $*" >&2; }
die() {
	local code=$1
	shift
	say "error: $*"
	exit "$code"
}

[ $# -eq 1 ] || die 2 "usage: $0 CACHE_DIR"
mkdir -p "$1"
CACHE=$(cd "$1" && pwd)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUN_PATTERN=${IPVS_VM_RUN:-^TestVM}
VM_TIMEOUT=${IPVS_VM_TIMEOUT:-300}
VM_ARGS=${IPVS_VM_ARGS:-}
VM_MEM=${IPVS_VM_MEM:-512}

for tool in apt-get apt-cache dpkg-deb qemu-system-x86_64 cpio gzip go; do
	command -v "$tool" >/dev/null || die 2 "$tool not found (apt-get install qemu-system-x86 busybox-static cpio)"
done
BUSYBOX=$(command -v busybox || true)
[ -n "$BUSYBOX" ] || die 2 "busybox not found (apt-get install busybox-static)"
if ldd "$BUSYBOX" >/dev/null 2>&1; then
	die 2 "$BUSYBOX is dynamically linked; the VM needs busybox-static"
fi

# --- 1. the kernel, cached -------------------------------------------------
PKG=${IPVS_VM_KERNEL_PKG:-}
if [ -z "$PKG" ] && [ -f "$CACHE/kernel.pkg" ]; then
	PKG=$(cat "$CACHE/kernel.pkg")
fi
if [ -z "$PKG" ]; then
	PKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
		awk '/Depends: linux-image-[0-9].*-cloud-amd64$/ {print $2; exit}')
	[ -n "$PKG" ] || PKG=$(apt-cache search --names-only '^linux-image-[0-9.]+-[0-9]+-cloud-amd64$' 2>/dev/null |
		awk '{print $1}' | sort -V | tail -1)
	[ -n "$PKG" ] || die 2 "no linux-image-*-cloud-amd64 package known to apt (run apt-get update?)"
fi
KDIR=$CACHE/kernel/$PKG
if [ ! -f "$KDIR/.extracted" ]; then
	say "downloading $PKG"
	mkdir -p "$CACHE/debs"
	rm -f "$CACHE/debs/${PKG}_"*.deb
	(cd "$CACHE/debs" && apt-get download "$PKG" >&2) || die 2 "apt-get download $PKG failed"
	DEB=$(ls "$CACHE/debs/${PKG}_"*.deb 2>/dev/null | head -1)
	[ -n "$DEB" ] || die 2 "apt-get download $PKG produced no .deb"
	rm -rf "$KDIR"
	mkdir -p "$KDIR"
	dpkg-deb -x "$DEB" "$KDIR" || die 2 "dpkg-deb -x $DEB failed"
	touch "$KDIR/.extracted"
	echo "$PKG" >"$CACHE/kernel.pkg"
else
	say "kernel $PKG cached"
fi
VMLINUZ=$(ls "$KDIR"/boot/vmlinuz-* 2>/dev/null | head -1)
[ -n "$VMLINUZ" ] || die 2 "no vmlinuz in $PKG"
KVER=${VMLINUZ##*/vmlinuz-}
MODDIR=$KDIR/lib/modules/$KVER
[ -d "$MODDIR" ] || die 2 "no modules for $KVER in $PKG"

# --- 2. the modules, in dependency order -----------------------------------
# ip_vs_mh is left out on purpose: the test shows the error for a scheduler
# the kernel cannot load.
WANT="ip_vs ip_vs_rr ip_vs_sh ip_vs_wrr ip_vs_lc ip_vs_wlc dummy veth nf_tables nft_ct nft_chain_nat nft_masq nft_reject_inet nft_nat nft_fib_inet nf_conntrack_netlink"
declare -A MODPATH=() SEEN=()
while IFS= read -r f; do
	n=${f##*/}
	n=${n%%.ko*}
	MODPATH[${n//-/_}]=$f
done < <(find "$MODDIR" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst')
ORDER=()
modinfo_depends() { # the depends= field of a module's .modinfo
	local f=$1
	case $f in
	*.xz) xz -dc "$f" ;;
	*.zst) zstd -dc "$f" ;;
	*) cat "$f" ;;
	esac | tr '\0' '\n' | sed -n 's/^depends=//p' | head -1 | tr ',' ' '
}
visit() {
	local m=${1//-/_}
	[ -n "${SEEN[$m]:-}" ] && return 0
	SEEN[$m]=1
	[ -n "${MODPATH[$m]:-}" ] || {
		say "module $m not in $PKG (built in?), skipping"
		return 0
	}
	local d
	for d in $(modinfo_depends "${MODPATH[$m]}"); do visit "$d"; done
	ORDER+=("$m")
}
for m in $WANT; do visit "$m"; done
say "modules: ${ORDER[*]}"

# --- 3. the test binary and the initramfs ----------------------------------
WORK=$CACHE/run
rm -rf "$WORK"
mkdir -p "$WORK/root"/{bin,dev,proc,sys,tmp,lib/modules}
say "building the test binary"
(cd "$ROOT" && CGO_ENABLED=0 go test -c -tags ipvsvm -o "$WORK/root/pxd-ipvs.test" ./pkg/proxier/ipvs) ||
	die 2 "go test -c failed"
cp "$BUSYBOX" "$WORK/root/bin/busybox"
# Only the applets /init uses: no modprobe, so the kernel cannot load a
# module the initramfs does not carry.
for a in sh mount insmod poweroff cat echo mkdir sleep; do ln -s busybox "$WORK/root/bin/$a"; done
: >"$WORK/root/modules.order"
for m in "${ORDER[@]}"; do
	f=${MODPATH[$m]}
	case $f in
	*.xz) xz -dc "$f" >"$WORK/root/lib/modules/$m.ko" ;;
	*.zst) zstd -dc "$f" >"$WORK/root/lib/modules/$m.ko" ;;
	*) cp "$f" "$WORK/root/lib/modules/$m.ko" ;;
	esac
	echo "$m" >>"$WORK/root/modules.order"
done
mknod -m 600 "$WORK/root/dev/console" c 5 1 2>/dev/null || true
cat >"$WORK/root/init" <<EOF
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
for m in \$(cat /modules.order); do
	insmod /lib/modules/\$m.ko || echo "PXD-VM: insmod \$m failed"
done
echo "PXD-VM: modules loaded"
PROXYD_IPVS_VM=1 /pxd-ipvs.test -test.v -test.timeout $((VM_TIMEOUT > 100 ? VM_TIMEOUT - 100 : VM_TIMEOUT))s -test.run '$RUN_PATTERN' $VM_ARGS
rc=\$?
if [ \$rc -eq 0 ]; then echo "PXD-VM-RESULT: PASS"; else echo "PXD-VM-RESULT: FAIL rc=\$rc"; fi
poweroff -f
EOF
chmod +x "$WORK/root/init"
(cd "$WORK/root" && find . | cpio -o -H newc --quiet | gzip -1 >"$WORK/initramfs.gz") || die 2 "building the initramfs failed"

# --- 4. boot ---------------------------------------------------------------
say "booting $KVER under qemu (TCG, timeout ${VM_TIMEOUT}s)"
LOG=$WORK/console.log
start=$(date +%s.%N)
set +e
timeout --kill-after=10 "$VM_TIMEOUT" qemu-system-x86_64 -accel tcg -m "$VM_MEM" -nodefaults -no-reboot \
	-display none -kernel "$VMLINUZ" -initrd "$WORK/initramfs.gz" \
	-append "console=ttyS0 panic=-1 quiet" -serial "file:$LOG"
qrc=$?
set -e
end=$(date +%s.%N)
secs=$(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}')
tr -d '\r' <"$LOG" | sed -n '/PXD-VM: modules loaded/,$p' >&2 || true
result=$(tr -d '\r' <"$LOG" | grep -a 'PXD-VM-RESULT:' | tail -1 || true)
say "VM boot + test: ${secs}s (qemu exit $qrc)"
case $result in
*PASS*)
	say "PASS"
	exit 0
	;;
*FAIL*)
	rc=${result##*rc=}
	say "FAIL (test exit $rc); console log: $LOG"
	exit "$rc"
	;;
esac
[ $qrc -eq 124 ] && say "the VM timed out after ${VM_TIMEOUT}s"
tail -30 "$LOG" >&2 || true
die 3 "the VM gave no result; console log: $LOG"
