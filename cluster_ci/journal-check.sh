#!/usr/bin/env bash
# cluster_ci/journal-check.sh — mtlsd's log in a real journal (issue 21, item 3).
#
#   cluster_ci/journal-check.sh PID1 [--bin PATH] [--unit UNIT]...
#
# PID1 is the host-side PID of a booted systemd host's PID 1 (the rig's
# $work/pid1-NAME); every command runs inside it with `nsenter -t PID1 -a`.
# The host needs systemd-run, journalctl and python3 (the rig's rootfs has
# them) and an mtlsd binary at --bin (default /usr/bin/mtlsd, as the .deb
# installs it).
#
# On the host, under transient units (so stderr is the journal stream and
# JOURNAL_STREAM is set, as for mtlsd.service):
#   1. `mtlsd check` of a missing file: its error line must be PRIORITY 3
#      (the <3> prefix on the stream).
#   2. `mtlsd dev` in a temporary state dir on ports 27900..27990: its
#      `listening` event must be PRIORITY 6 with LISTENER=echo-in; a TLS
#      client without a certificate (python3) must give a PRIORITY 4
#      `TLS handshake refused` entry with LISTENER and REASON fields; a key
#      broken on disk must give a PRIORITY 3 `reload rejected` entry that
#      `journalctl -p err` finds.
#   3. Every entry of those units, and of each --unit (e.g. mtlsd, the
#      deployed service), has a MESSAGE that is text (not a byte array: no
#      escape codes) and starts with no timestamp of mtlsd's own.
# Exit 0 when all hold; 1 with what failed. Prints 'N passed, N failed'.
set -euo pipefail

[ $# -ge 1 ] || { sed -n '3,4p' "$0" >&2; exit 2; }
pid1="$1"
shift
bin=/usr/bin/mtlsd
units=()
while [ $# -gt 0 ]; do
    case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --unit) units+=("$2"); shift 2 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done

on_host() { nsenter -t "$pid1" -a "$@"; }
tag="jcheck-$$"
passed=0
failed=0
pass() { printf 'PASS  %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'FAIL  %s\n' "$*"; failed=$((failed + 1)); }
finish() {
    on_host systemctl stop "mtlsd-$tag-dev.service" >/dev/null 2>&1 || true
    on_host rm -rf "/tmp/$tag" || true
    printf 'journal check: %d passed, %d failed\n' "$passed" "$failed"
}
trap finish EXIT

# entries UNIT [journalctl options]: the unit's entries as JSON lines.
entries() {
    local unit="$1"
    shift
    on_host journalctl --no-pager -o json -u "$unit" "$@"
}

# expect WHAT UNIT PYTHON-CONDITION [journalctl options]: some entry e
# (a dict of the entry's fields) satisfies the condition.
expect() {
    local what="$1" unit="$2" cond="$3"
    shift 3
    local found=""
    for _ in $(seq 1 50); do
        if entries "$unit" "$@" | python3 -c "
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    if $cond:
        sys.exit(0)
sys.exit(1)"; then
            found=1
            break
        fi
        sleep 0.2
    done
    if [ -n "$found" ]; then pass "$what"; else fail "$what"; entries "$unit" "$@" | tail -5 | cut -c1-400 >&2; fi
}

# plain UNIT: every entry's MESSAGE is text without escapes or a leading
# timestamp.
plain() {
    local unit="$1" bad
    bad="$(entries "$unit" | python3 -c "
import json, re, sys
for line in sys.stdin:
    e = json.loads(line)
    m = e.get('MESSAGE')
    if not isinstance(m, str) or '\x1b' in m or re.match(r'\d{4}-\d\d-\d\dT', m):
        print(repr(m)[:200])")"
    if [ -z "$bad" ]; then pass "$unit: every message is plain text, no escapes, no own timestamp"; else fail "$unit: $bad"; fi
}

# 1. A command's error on the journal stream.
check_unit="mtlsd-$tag-check.service"
on_host systemd-run --quiet --wait --collect --unit="$check_unit" \
    "$bin" check --config "/tmp/$tag/missing.toml" >/dev/null 2>&1 || true
expect "mtlsd check's error is PRIORITY 3" "$check_unit" \
    "e.get('PRIORITY') == '3' and 'mtlsd check' in str(e.get('MESSAGE'))"

# 2. The daemon's events over the native protocol.
dev_unit="mtlsd-$tag-dev.service"
on_host mkdir -p "/tmp/$tag"
on_host systemd-run --quiet --unit="$dev_unit" --property=Type=exec \
    "$bin" dev --state-dir "/tmp/$tag/dev" --port-base 27900
expect "listening is PRIORITY 6 with LISTENER" "$dev_unit" \
    "e.get('PRIORITY') == '6' and str(e.get('MESSAGE')).startswith('listening') and e.get('LISTENER') == 'echo-in'"
on_host python3 -c "
import socket, ssl
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
try:
    with socket.create_connection(('127.0.0.1', 28343), timeout=5) as raw:
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(b'hello')
            tls.recv(10)
except Exception:
    pass
" || true
expect "a refused handshake is PRIORITY 4 with LISTENER and REASON" "$dev_unit" \
    "e.get('PRIORITY') == '4' and str(e.get('MESSAGE')).startswith('TLS handshake refused') and e.get('LISTENER') == 'echo-in' and bool(e.get('REASON'))"
on_host sh -c "echo broken > /tmp/$tag/dev/host.key"
expect "a rejected reload is PRIORITY 3, found by journalctl -p err" "$dev_unit" \
    "e.get('PRIORITY') == '3' and str(e.get('MESSAGE')).startswith('reload rejected')" -p err
on_host systemctl stop "$dev_unit" >/dev/null 2>&1 || true

# 3. Plain messages everywhere.
plain "$check_unit"
plain "$dev_unit"
for unit in "${units[@]}"; do plain "$unit"; done

[ "$failed" -eq 0 ]
