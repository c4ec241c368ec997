# shellcheck shell=bash
# shellcheck disable=SC2154 # work, prefix: set by cluster_ci/run
# cluster_ci/hosts.sh — booted systemd hosts for cluster_ci (sourced by run).
#
# Each host is a Debian 12 rootfs booted with systemd-nspawn (its own
# systemd 252 as PID 1, journald, sshd) inside the host's network namespace.
# The rootfs is built once per machine with mmdebstrap and cached; every
# boot uses it read-only with a tmpfs overlay (--volatile=overlay), so
# nothing a host does survives it and hosts share nothing but the image.
#
# There is no systemd on this machine: nspawn runs with --keep-unit
# --register=no, each host in cgroups of its own (v1 name=systemd and the
# unified hierarchy) that the launching shell moves itself into before it
# execs nspawn. machinectl and systemctl -M cannot reach the hosts; host_exec
# uses nsenter into the host's PID 1, Ansible uses ssh.
#
# Needs: $work (the rig's temp dir), $prefix (namespace prefix), log,
# wait_for, port_open.

rootfs_cache=/var/cache/mtlsd-cluster-ci
rootfs="$rootfs_cache/rootfs-bookworm"
rootfs_packages=systemd,systemd-sysv,dbus,openssh-server,python3,iproute2,libpam-systemd,procps

ensure_rootfs() {
    # Built once per machine (about 40 s, 270 MB); the lock keeps two
    # builders (another rig, another checkout) from racing.
    [ -x "$rootfs/lib/systemd/systemd" ] && return 0
    mkdir -p "$rootfs_cache"
    (
        flock 8
        [ -x "$rootfs/lib/systemd/systemd" ] && exit 0
        local mirror
        mirror="$(apt_mirror)"
        log "building the host rootfs (mmdebstrap bookworm from $mirror) into $rootfs"
        rm -rf "$rootfs.tmp"
        mmdebstrap --quiet --variant=minbase --include="$rootfs_packages" bookworm "$rootfs.tmp" "$mirror" \
            >"$work/logs/mmdebstrap.log" 2>&1 || { tail -20 "$work/logs/mmdebstrap.log" >&2; exit 1; }
        mv "$rootfs.tmp" "$rootfs"
    ) 8>"$rootfs_cache/rootfs.lock"
}
apt_mirror() {
    # The Debian mirror apt on this machine already uses.
    local uri
    uri="$(grep -rhs -E '^(URIs:|deb) ' /etc/apt/sources.list /etc/apt/sources.list.d/ |
        grep -m1 -E 'debian/?( |$)' | awk '{print $2}')"
    [ -n "$uri" ] || uri=http://deb.debian.org/debian
    echo "$uri"
}

boot_host() {
    # boot_host NAME: boots host NAME in namespace $prefix-NAME; waits until
    # its systemd reports running (or degraded) and sshd listens. Records
    # the nspawn PID (track: stopped by PID on exit) and the cgroups.
    local h="$1" cg pid leader state
    cg="mtlsd-cci-$h-$$"
    mkdir -p "/sys/fs/cgroup/systemd/$cg" "/sys/fs/cgroup/unified/$cg"
    echo "$cg" >>"$work/cgroups"
    (
        echo "$BASHPID" >"/sys/fs/cgroup/systemd/$cg/cgroup.procs"
        echo "$BASHPID" >"/sys/fs/cgroup/unified/$cg/cgroup.procs"
        exec systemd-nspawn -q -D "$rootfs" --volatile=overlay -b -M "$h" --hostname="$h" \
            --register=no --keep-unit --console=read-only \
            --network-namespace-path="/run/netns/$prefix-$h" \
            --bind-ro="$work/ssh/authorized_keys:/root/.ssh/authorized_keys"
    ) >"$work/logs/console-$h.log" 2>&1 &
    pid=$!
    echo "$pid" >"$work/pid-nspawn-$h"
    for _ in $(seq 1 150); do
        leader="$(ps -o pid= --ppid "$pid" 2>/dev/null | head -1 | tr -d ' ')"
        if [ -n "$leader" ]; then
            state="$(nsenter -t "$leader" -a systemctl is-system-running 2>/dev/null)" || true
            if [ "$state" = running ] || [ "$state" = degraded ]; then
                echo "$leader" >"$work/pid1-$h"
                [ "$state" = running ] || nsenter -t "$leader" -a systemctl --failed --no-legend >&2
                wait_for 10 port_open "$h" 127.0.0.1 22 || { echo "error: sshd on $h does not listen" >&2; return 1; }
                return 0
            fi
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "error: host $h did not boot (state: ${state:-none}):" >&2
    tail -20 "$work/logs/console-$h.log" >&2
    return 1
}
stop_hosts() {
    # stop_hosts NAME...: SIGTERM to each host's nspawn (its systemd shuts
    # the host down, about 2 s), all at once; up to 15 s, then SIGKILL.
    local h f pids=()
    for h in "$@"; do
        f="$work/pid-nspawn-$h"
        [ -f "$f" ] || continue
        pids+=("$(cat "$f")")
        kill -TERM "${pids[-1]}" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null && echo "killed nspawn $pid with SIGKILL" >&2
    done
    return 0
}
remove_cgroups() {
    # The cgroups boot_host made (depth first: nspawn makes payload/ and
    # supervisor/ below them). Only empty ones go; a busy one is reported.
    local cg r
    [ -f "$work/cgroups" ] || return 0
    while read -r cg; do
        for r in systemd unified; do
            [ -d "/sys/fs/cgroup/$r/$cg" ] || continue
            find "/sys/fs/cgroup/$r/$cg" -depth -type d -exec rmdir {} + 2>/dev/null ||
                echo "warning: cgroup /sys/fs/cgroup/$r/$cg still busy" >&2
        done
    done <"$work/cgroups"
}
remove_stale_cgroups() {
    # Cgroups of a rig that was SIGKILLed (its nspawns are gone with their
    # namespaces' processes): mtlsd-cci-* whose tree holds no process.
    local d r
    for r in systemd unified; do
        for d in /sys/fs/cgroup/"$r"/mtlsd-cci-*; do
            [ -d "$d" ] || continue
            [ -z "$(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)" ] || continue
            find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
        done
    done
}
host_pid1() { cat "$work/pid1-$1"; }
host_exec() {
    # host_exec NAME COMMAND...: COMMAND inside host NAME (all of its
    # namespaces: mount, PID, network, UTS, IPC), as root.
    local h="$1"
    shift
    nsenter -t "$(host_pid1 "$h")" -a "$@"
}
host_root() {
    # host_root NAME: the host's file system as seen from this machine.
    echo "/proc/$(host_pid1 "$1")/root"
}
