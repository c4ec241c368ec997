#!/usr/bin/env bash
# Checks the mtlsd systemd unit without needing systemd as PID 1.
#
#   deploy/systemd/check.sh [UNIT_FILE]        (default: mtlsd.service beside this script)
#
# 1. `systemd-analyze verify` prints nothing. verify insists that every
#    Exec*= binary exists and that the units the service depends on
#    (sysinit.target, network-online.target, ...) can be loaded. So the
#    unit is verified inside a throw-away root (--root=): a copy of this
#    machine's /usr/lib/systemd/system, the unit under test in
#    etc/systemd/system, and a stub executable at the unit's own ExecStart
#    path. The unit text itself is not rewritten, and nothing is installed
#    on this machine.
# 2. `systemd-analyze security --offline=yes` scores the unit at most
#    MAX_EXPOSURE (2.0).
# 3. A real run of mtlsd under strace stays inside the unit's sandbox:
#    every system call made by `mtlsd check`, `mtlsd dev` (start-up, a
#    mTLS round trip, a reload, SIGTERM drain) and `mtlsd reload` (over TCP,
#    and over the control socket as ExecReload= runs it) is allowed
#    by the unit's SystemCallFilter= lines, every socket() family is listed
#    in RestrictAddressFamilies=, and no mapping is writable and executable
#    at once (MemoryDenyWriteExecute=). This stands in for running the
#    unit under a real systemd, which test machines do not have. It needs
#    the mtlsd binary: MTLSD_BIN, default target/debug/mtlsd of this
#    repository; without one this step is reported as skipped.
# 4. The token drop-in (DROPIN, default mtlsd-pkcs11.conf beside this
#    script: what the unit must relax for a key in a PKCS#11 token) sets
#    only LoadCredential=, ReadWritePaths=, SupplementaryGroups= and, for a
#    hardware token, PrivateDevices=no with DeviceAllow=; the unit with it
#    passes `systemd-analyze verify` and scores at most MAX_EXPOSURE; and
#    the sandbox audit of 3 is repeated with the key in a real SoftHSM2
#    token (apt softhsm2): `mtlsd check` and `mtlsd run` load the module,
#    log in with the PIN from $CREDENTIALS_DIRECTORY (as LoadCredential=
#    provides it) and sign a full handshake (openssl s_client with the dev
#    client certificate), every system call inside SystemCallFilter=, no
#    writable and executable mapping.
#
# Environment: MTLSD_BIN (see 3), MAX_EXPOSURE (2.0), CHECK_PORT_BASE
# (27300; the traced run uses it, +80, +90 and +443 on 127.0.0.1),
# CHECK_KEEP=1 keeps the work directory. MTLSD_BIN is removed from the
# environment before mtlsd runs: mtlsd reads every MTLSD_* variable as a
# config override and would refuse the unknown key "bin".
#
# Installs systemd (for systemd-analyze) and strace with apt-get when they
# are missing and it runs as root. Exits non-zero on any failure.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
unit="${1:-$here/mtlsd.service}"
dropin="${DROPIN:-$here/mtlsd-pkcs11.conf}"
bin="${MTLSD_BIN:-$repo/target/debug/mtlsd}"
unset MTLSD_BIN
max_exposure="${MAX_EXPOSURE:-2.0}"
port_base="${CHECK_PORT_BASE:-27300}"

failures=0
pass() { printf 'PASS  %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; failures=$((failures + 1)); }

apt_updated=""
need() {
    # need COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: '$1' is missing; install the Debian package '$2'" >&2
        exit 1
    fi
    if [ -z "$apt_updated" ]; then
        "$repo/scripts/apt-quiet" update
        apt_updated=1
    fi
    "$repo/scripts/apt-quiet" install "$2"
}

need systemd-analyze systemd

[ -f "$unit" ] || { echo "error: no unit file at $unit" >&2; exit 1; }
name="$(basename "$unit")"

work="$(mktemp -d /tmp/mtlsd-unit-check.XXXXXX)"
tracer_pid=""
daemon_pid=""
cleanup() {
    # strace -o FILE blocks fatal signals, so the traced mtlsd is signalled
    # itself; strace exits with it.
    if [ -n "$daemon_pid" ]; then
        kill "$daemon_pid" 2>/dev/null || true
    fi
    if [ -n "$tracer_pid" ]; then
        wait "$tracer_pid" 2>/dev/null || true
    fi
    if [ -n "${token_tracer:-}" ]; then
        kill "${token_daemon:-}" 2>/dev/null || true
        wait "$token_tracer" 2>/dev/null || true
    fi
    [ -n "${CHECK_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

# --- 1. systemd-analyze verify ------------------------------------------
root="$work/root"
mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd"
units_dir=/usr/lib/systemd/system
[ -d "$units_dir" ] || units_dir=/lib/systemd/system
cp -a "$units_dir" "$root/usr/lib/systemd/system"
cp "$unit" "$root/etc/systemd/system/$name"
# The retry path unit mtlsd.service wants (and its service) come along.
cp "$here/mtlsd-retry.path" "$here/mtlsd-retry.service" "$root/etc/systemd/system/"
# Every Exec*= command path (without the -@:+! prefixes) gets a stub.
mapfile -t exec_paths < <(sed -n 's/^Exec[A-Za-z]*=[-@:+!]*\([^ ]*\).*/\1/p' "$unit" \
    "$here/mtlsd-retry.service" | sort -u)
for path in "${exec_paths[@]}"; do
    mkdir -p "$root$(dirname "$path")"
    printf '#!/bin/sh\nexit 0\n' >"$root$path"
    chmod 0755 "$root$path"
done
verify_out="$(systemd-analyze verify --root="$root" "$name" mtlsd-retry.path mtlsd-retry.service 2>&1)" && verify_rc=0 || verify_rc=$?
if [ "$verify_rc" -eq 0 ] && [ -z "$verify_out" ]; then
    pass "systemd-analyze verify $name printed nothing"
else
    fail "systemd-analyze verify $name (exit $verify_rc):"
    printf '      %s\n' "$verify_out"
fi

# --- 2. systemd-analyze security -----------------------------------------
security_out="$(systemd-analyze security --offline=yes "$root/etc/systemd/system/$name" 2>&1)" || true
score="$(printf '%s\n' "$security_out" |
    sed -n 's/.*Overall exposure level for [^:]*: \([0-9][0-9.]*\).*/\1/p' | tail -1)"
if [ -z "$score" ]; then
    fail "systemd-analyze security printed no exposure level:"
    printf '      %s\n' "$security_out"
elif awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }'; then
    pass "systemd-analyze security --offline=yes: exposure $score (limit $max_exposure)"
else
    fail "systemd-analyze security --offline=yes: exposure $score is above $max_exposure"
    printf '%s\n' "$security_out" | grep -E '^✗' | sed 's/^/      /'
fi

# --- 3. a real run stays inside the sandbox ------------------------------
expand_group() {
    # Prints the system calls of one name or @group, recursively.
    case "$1" in
    @*)
        systemd-analyze syscall-filter "$1" | sed '1,2d; s/^ *//; /^#/d; /^$/d' |
            while read -r entry; do expand_group "$entry"; done
        ;;
    *) printf '%s\n' "$1" ;;
    esac
}

if [ ! -x "$bin" ]; then
    printf 'SKIP  sandbox audit: no mtlsd binary at %s (set MTLSD_BIN)\n' "$bin"
else
    need strace strace
    # As systemd reads the lines, in order: the first is an allow list
    # (the unit's form; a deny list first would make the default "allow"),
    # each later line adds its calls to it, or with "~" takes them out, and
    # an empty one starts over.
    effective="$work/effective.txt"
    entries="$work/entries.txt"
    : >"$effective"
    while read -r line; do
        case "$line" in
        "") : >"$effective" ;;
        "~"*)
            for g in ${line#\~}; do expand_group "$g"; done | sort -u >"$entries"
            comm -23 "$effective" "$entries" >"$effective.next"
            mv "$effective.next" "$effective"
            ;;
        *)
            for g in $line; do expand_group "$g"; done | sort -u >"$entries"
            sort -u "$effective" "$entries" -o "$effective"
            ;;
        esac
    done < <(sed -n 's/^SystemCallFilter=//p' "$unit")
    if sed -n 's/^SystemCallFilter=//p' "$unit" | grep -v '^$' | head -1 | grep -q '^~'; then
        fail "sandbox audit: the unit's first SystemCallFilter= is a deny list; this check models an allow list"
    fi
    families="$(sed -n 's/^RestrictAddressFamilies=//p' "$unit" | tr ' ' '\n' | sort -u)"

    state="$work/dev"
    trace="$work/trace"
    admin="127.0.0.1:$((port_base + 90))"
    strace -f -qq -o "$trace.dev" "$bin" dev --state-dir "$state" \
        --port-base "$port_base" >"$work/dev.log" 2>&1 &
    tracer_pid=$!
    # The traced mtlsd is the child of strace that runs the binary (strace
    # also forks a short-lived child of its own while starting).
    real_bin="$(readlink -f "$bin")"
    for _ in $(seq 1 300); do
        if [ -z "$daemon_pid" ]; then
            for pid in $(pgrep -P "$tracer_pid" || true); do
                [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" = "$real_bin" ] && daemon_pid="$pid"
            done
        fi
        [ -n "$daemon_pid" ] && grep -q 'mtlsd dev is running' "$work/dev.log" && break
        sleep 0.1
    done
    ok=1
    # mtlsd check and mtlsd reload run under the same filter (ExecStartPre=,
    # ExecReload=).
    strace -f -qq -o "$trace.check" "$bin" check --config "$state/mtlsd.toml" >/dev/null 2>&1 || ok=0
    reply="$(exec 3<>"/dev/tcp/127.0.0.1/$((port_base + 80))" && echo audit-ping >&3 && head -1 <&3)" || ok=0
    [ "$reply" = "audit-ping" ] || ok=0
    strace -f -qq -o "$trace.reload" "$bin" reload --admin "$admin" >/dev/null 2>&1 || ok=0
    # ExecReload='s form: through the control socket mtlsd dev serves.
    strace -f -qq -o "$trace.reload-socket" "$bin" reload --config "$state/mtlsd.toml" >/dev/null 2>&1 || ok=0
    # It went through the socket: it dialled it, and never fell back to
    # the admin port (strace may split a call across lines: "unfinished").
    if ! grep -q "connect([0-9]*, {sa_family=AF_UNIX, sun_path=\"$state/admin.sock\"}" "$trace.reload-socket" ||
        grep -q "sin_port=htons($((port_base + 90)))" "$trace.reload-socket"; then
        echo "      mtlsd reload --config did not go through $state/admin.sock" >&2
        ok=0
    fi
    kill -TERM "$daemon_pid" 2>/dev/null || ok=0
    wait "$tracer_pid" || ok=0
    tracer_pid=""
    daemon_pid=""
    if [ "$ok" -ne 1 ]; then
        fail "sandbox audit: the traced run did not work (round trip, check or reload failed); log:"
        sed 's/^/      /' "$work/dev.log"
    else
        cat "$trace".* >"$trace.all"
        sed -n 's/^[0-9]\{1,\} \{1,\}\([a-z0-9_]\{1,\}\)(.*/\1/p' "$trace.all" | sort -u >"$work/used.txt"
        outside="$(comm -23 "$work/used.txt" "$effective" | tr '\n' ' ')"
        if [ -z "$outside" ]; then
            pass "sandbox audit: all $(wc -l <"$work/used.txt") system calls used are allowed by SystemCallFilter="
        else
            fail "sandbox audit: system calls outside SystemCallFilter=: $outside"
        fi
        used_families="$(grep -o 'socket(AF_[A-Z0-9]*' "$trace.all" | sed 's/socket(//' | sort -u)"
        bad_families="$(comm -23 <(printf '%s\n' "$used_families") <(printf '%s\n' "$families") | tr '\n' ' ')"
        if [ -z "$bad_families" ]; then
            pass "sandbox audit: socket families used ($(printf '%s' "$used_families" | tr '\n' ' ')) are in RestrictAddressFamilies="
        else
            fail "sandbox audit: socket families outside RestrictAddressFamilies=: $bad_families"
        fi
        if grep -qE 'PROT_WRITE\|PROT_EXEC|PROT_EXEC\|PROT_WRITE' "$trace.all"; then
            fail "sandbox audit: a writable and executable mapping was made (MemoryDenyWriteExecute=)"
        else
            pass "sandbox audit: no writable+executable mapping (MemoryDenyWriteExecute=)"
        fi
    fi
fi

# --- 4. the token drop-in ----------------------------------------------------
if [ ! -f "$dropin" ]; then
    fail "no token drop-in at $dropin"
else
    # Only what a token needs: nothing else of the hardening is relaxed.
    others="$(sed -n 's/^\([A-Za-z]*\)=.*/\1/p' "$dropin" | sort -u |
        grep -vxE 'LoadCredential|ReadWritePaths|SupplementaryGroups|PrivateDevices|DeviceAllow' | tr '\n' ' ')" || true
    if [ -z "$others" ] && grep -q '^LoadCredential=mtlsd-pin:' "$dropin" &&
        { ! grep -q '^PrivateDevices=' "$dropin" || grep -q '^DeviceAllow=' "$dropin"; }; then
        pass "token drop-in $(basename "$dropin") sets only $(sed -n 's/^\([A-Za-z]*\)=.*/\1=/p' "$dropin" | sort -u | tr '\n' ' ')"
    else
        fail "token drop-in $(basename "$dropin") relaxes more than a token needs: ${others:-PrivateDevices= without DeviceAllow=, or no LoadCredential=mtlsd-pin:}"
    fi
    mkdir -p "$root/etc/systemd/system/$name.d"
    cp "$dropin" "$root/etc/systemd/system/$name.d/pkcs11.conf"
    verify_out="$(systemd-analyze verify --root="$root" "$name" 2>&1)" && verify_rc=0 || verify_rc=$?
    if [ "$verify_rc" -eq 0 ] && [ -z "$verify_out" ]; then
        pass "systemd-analyze verify $name with the token drop-in printed nothing"
    else
        fail "systemd-analyze verify $name with the token drop-in (exit $verify_rc):"
        printf '      %s\n' "$verify_out"
    fi
    security_out="$(systemd-analyze security --offline=yes --root="$root" "$name" 2>&1)" || true
    score="$(printf '%s\n' "$security_out" |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9][0-9.]*\).*/\1/p' | tail -1)"
    if [ -n "$score" ] && awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }'; then
        pass "systemd-analyze security with the token drop-in: exposure $score (limit $max_exposure)"
    else
        fail "systemd-analyze security with the token drop-in: exposure ${score:-none} (limit $max_exposure)"
        printf '%s\n' "$security_out" | grep -E '^✗' | sed 's/^/      /'
    fi
fi
if [ ! -x "$bin" ] || [ ! -f "${state:-}/mtlsd.toml" ]; then
    printf 'SKIP  token sandbox audit: no mtlsd binary or no dev state (see 3)\n'
else
    need softhsm2-util softhsm2
    module=""
    for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so; do
        [ -f "$m" ] && module="$m" && break
    done
    hsm="$work/softhsm"
    mkdir -p "$hsm/tokens" "$hsm/credentials"
    printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$hsm/tokens" >"$hsm/softhsm2.conf"
    export SOFTHSM2_CONF="$hsm/softhsm2.conf"
    printf '4321\n' >"$hsm/credentials/mtlsd-pin"
    if ! { softhsm2-util --init-token --free --label mesh --pin 4321 --so-pin 8765 &&
        softhsm2-util --import "$state/host.key" --token mesh --label host --id 01 --pin 4321; } >"$hsm/init.log" 2>&1; then
        fail "token sandbox audit: softhsm2-util could not make the token:"
        sed 's/^/      /' "$hsm/init.log"
    fi
    # The dev configuration with the key in the token, the PIN a credential.
    sed -e "s|^key = .*|key = \"pkcs11:token=mesh;object=host;id=%01;type=private\"|" "$state/mtlsd.toml" >"$hsm/mtlsd.toml"
    printf '\n[pkcs11]\nmodule = "%s"\npin_credential = "mtlsd-pin"\n' "$module" >>"$hsm/mtlsd.toml"
    inbound="$(sed -n '/^\[\[inbound\]\]/,/^\[/ s/^listen = "\(.*\)"/\1/p' "$hsm/mtlsd.toml" | head -1)"
    ok=1
    CREDENTIALS_DIRECTORY="$hsm/credentials" strace -f -qq -o "$trace.token-check" "$bin" check \
        --config "$hsm/mtlsd.toml" >"$hsm/check.log" 2>&1 || ok=0
    grep -q "key        token 'mesh' object 'host' id 01" "$hsm/check.log" || ok=0
    CREDENTIALS_DIRECTORY="$hsm/credentials" strace -f -qq -o "$trace.token-run" "$bin" run \
        --config "$hsm/mtlsd.toml" >"$hsm/run.log" 2>&1 &
    token_tracer=$!
    real_bin="$(readlink -f "$bin")"
    token_daemon=""
    for _ in $(seq 1 300); do
        if [ -z "$token_daemon" ]; then
            for pid in $(pgrep -P "$token_tracer" || true); do
                [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" = "$real_bin" ] && token_daemon="$pid"
            done
        fi
        [ -n "$token_daemon" ] && grep -q '"ready"\|ready' "$hsm/run.log" && break
        sleep 0.1
    done
    # A full handshake: the server's CertificateVerify is signed in the token.
    openssl s_client -connect "$inbound" -CAfile "$state/ca.crt" -cert "$state/client.crt" \
        -key "$state/client.key" -no_ticket -servername localhost </dev/null >"$hsm/s_client.log" 2>&1 || true
    grep -q 'Verify return code: 0 (ok)' "$hsm/s_client.log" && grep -q '^New, TLSv1.3, Cipher is' "$hsm/s_client.log" || ok=0
    kill -TERM "$token_daemon" 2>/dev/null || ok=0
    wait "$token_tracer" || true
    token_tracer=""
    unset SOFTHSM2_CONF
    if [ "$ok" -ne 1 ]; then
        fail "token sandbox audit: check, start-up or the handshake with the token key failed:"
        sed 's/^/      /' "$hsm/check.log" "$hsm/s_client.log" | tail -20
    else
        cat "$trace".token-* >"$trace.token"
        sed -n 's/^[0-9]\{1,\} \{1,\}\([a-z0-9_]\{1,\}\)(.*/\1/p' "$trace.token" | sort -u >"$work/used-token.txt"
        outside="$(comm -23 "$work/used-token.txt" "$effective" | tr '\n' ' ')"
        if [ -z "$outside" ]; then
            pass "token sandbox audit: SoftHSM2 loaded, PIN from \$CREDENTIALS_DIRECTORY, a handshake signed in the token: all $(wc -l <"$work/used-token.txt") system calls allowed by SystemCallFilter="
        else
            fail "token sandbox audit: system calls outside SystemCallFilter= with the token: $outside"
        fi
        if grep -qE 'PROT_WRITE\|PROT_EXEC|PROT_EXEC\|PROT_WRITE' "$trace.token"; then
            fail "token sandbox audit: a writable and executable mapping was made with the token (MemoryDenyWriteExecute=)"
        else
            pass "token sandbox audit: no writable+executable mapping with the PKCS#11 module loaded"
        fi
    fi
fi

if [ "$failures" -eq 0 ]; then
    echo "unit check: all passed"
else
    echo "unit check: $failures failed"
    exit 1
fi
