#!/usr/bin/env bash
# Checks that the commands shown in the operator guide work with an mtlsd
# binary.
#
#   docs/operator_guide/check-commands.sh [PATH_TO_MTLSD]   (default: target/debug/mtlsd)
#
# 1. Every `mtlsd …` command line in a ```console block of any page uses a
#    subcommand and options that the binary's --help lists.
# 2. The commands of dev-ca.md's first two console blocks are run for real
#    against `mtlsd dev` (in a temporary state directory, on the port block
#    CHECK_PORT_BASE, default 27700, instead of 17000), and must succeed;
#    the one without a client certificate must fail.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="${1:-$repo/target/debug/mtlsd}"
base="${CHECK_PORT_BASE:-27700}"
[ -x "$bin" ] || { echo "error: no mtlsd binary at $bin" >&2; exit 1; }
# mtlsd reads every MTLSD_* variable as a config override.
while read -r var; do unset "$var"; done < <(env | sed -n 's/^\(MTLSD_[A-Za-z0-9_]*\)=.*/\1/p')

passed=0
failed=0
pass() { printf 'PASS  %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'FAIL  %s\n' "$*"; failed=$((failed + 1)); }

work="$(mktemp -d /tmp/mtlsd-doc-check.XXXXXX)"
dev_pid=""
cleanup() {
    if [ -n "$dev_pid" ]; then
        kill -TERM "$dev_pid" 2>/dev/null || true
        wait "$dev_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
    printf 'operator guide commands: %d passed, %d failed\n' "$passed" "$failed"
}
trap cleanup EXIT

console_lines() {
    # Prints the command lines (prompt removed) of the ```console blocks of $1.
    awk '/^```console/ { on = 1; next } /^```/ { on = 0 } on && /^[$#] / { print substr($0, 3) }' "$1"
}

# --- 1. options exist -----------------------------------------------------
for page in "$here"/*.md; do
    while read -r line; do
        # Drop leading VAR=value words; look at mtlsd invocations only.
        words=()
        read -r -a words <<<"$line"
        i=0
        while [ "$i" -lt "${#words[@]}" ] && [[ "${words[$i]}" == *=* ]]; do i=$((i + 1)); done
        [ "${words[$i]:-}" = mtlsd ] || continue
        sub="${words[$((i + 1))]:-}"
        first=$((i + 2))
        # A command with commands of its own: `mtlsd rotation check …`,
        # `mtlsd trust fetch …`.
        if [ "$sub" = rotation ] || [ "$sub" = trust ]; then
            sub="$sub ${words[$first]:-}"
            first=$((first + 1))
        fi
        # shellcheck disable=SC2086 # $sub is one or two words on purpose
        if ! help="$("$bin" $sub --help 2>&1)"; then
            fail "$(basename "$page"): unknown subcommand in: $line"
            continue
        fi
        ok=1
        for word in "${words[@]:$first}"; do
            case "$word" in
            --*)
                option="${word%%=*}"
                grep -q -- "$option" <<<"$help" || { ok=0; fail "$(basename "$page"): $option not in 'mtlsd $sub --help': $line"; }
                ;;
            esac
        done
        [ "$ok" -eq 0 ] || pass "$(basename "$page"): mtlsd $sub options exist: $line"
    done < <(console_lines "$page")
done

# --- 2. dev-ca.md's commands, for real ---------------------------------------
state="$work/dev"
"$bin" dev --state-dir "$state" --port-base "$base" >"$work/dev.log" 2>&1 &
dev_pid=$!
for _ in $(seq 1 100); do
    grep -q 'mtlsd dev is running' "$work/dev.log" && break
    sleep 0.1
done
mkdir -p "$work/bin"
ln -s "$bin" "$work/bin/mtlsd"
runnable="$(awk '/^```console/ { n++; on = (n <= 2); next } /^```/ { on = 0 } on && /^\$ / { print substr($0, 3) }' "$here/dev-ca.md")"
while read -r line; do
    [ -n "$line" ] || continue
    case "$line" in "mtlsd dev "*) continue ;; esac # already running, on other ports
    cmd="${line//\/tmp\/mtlsd-dev/$state}"
    for offset in 0 80 90 443; do
        cmd="${cmd//$((17000 + offset))/$((base + offset))}"
    done
    # s_client -quiet keeps the connection after its input ends: with a
    # client certificate, success is the echo daemon's answer; without one,
    # the server's refusal ends it with an error.
    expect=0
    echoed=""
    case "$line" in
    *"openssl s_client"*"-cert "*)
        cmd="(echo hello-through-mtls; sleep 2) | timeout 4 $cmd"
        echoed=hello-through-mtls
        ;;
    *"openssl s_client"*)
        cmd="(echo hello; sleep 2) | timeout 4 $cmd"
        expect=1
        ;;
    esac
    if out="$(PATH="$work/bin:$PATH" timeout 10 bash -c "$cmd" 2>&1)"; then rc=0; else rc=$?; fi
    if [ -n "$echoed" ]; then
        if grep -qx "$echoed" <<<"$out"; then rc=0; else rc=1; fi
    fi
    if { [ "$expect" -eq 0 ] && [ "$rc" -eq 0 ]; } || { [ "$expect" -ne 0 ] && [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]; }; then
        pass "dev-ca.md runs (exit $rc): $line"
    else
        fail "dev-ca.md (exit $rc, wanted $([ "$expect" -eq 0 ] && echo 0 || echo non-zero)): $line"
        printf '%s\n' "$out" | head -5 | sed 's/^/      /'
    fi
done <<<"$runnable"
if grep -q '"no_client_cert"' "$work/dev.log"; then
    pass "dev-ca.md: the refusal is logged as no_client_cert"
else
    fail "dev-ca.md: no no_client_cert refusal in the log"
fi

[ "$failed" -eq 0 ]
