#!/usr/bin/env bash
# Checks the Debian package of mtlsd without installing it on this machine.
#
#   deploy/debian/check.sh [DEB]
#       (default: target/debian/mtlsd_<changelog version>_amd64.deb, as
#       deploy/debian/build leaves it)
#
# 1. Control data (dpkg-deb -I): name, version (the changelog's), arch,
#    dependencies; no conffiles at all (the role owns /etc/mtlsd/mtlsd.toml).
# 2. Contents (dpkg-deb -c, then dpkg -x into a throw-away root): all
#    root:root, md5sums match, the binary is stripped and runs, nothing
#    under /etc, the unit runs /usr/bin/mtlsd and has
#    ConditionPathExists=/etc/mtlsd/mtlsd.toml, one man page per command
#    and each renders with `man -l` without warnings, the completions, the
#    sysusers file creates the user in a throw-away root, the changelog
#    (gzipped, newest entry = package version), the DEP-5 copyright, and the
#    example configuration passes `mtlsd check --strict` with throw-away
#    material (openssl) for its host.
# 3. The packaged unit passes deploy/systemd/check.sh (systemd-analyze
#    verify and security, and the sandbox audit run of the packaged binary).
# 4. The maintainer scripts never enable or start mtlsd: postinst is run
#    with stubs for every command it may call (in a private mount namespace
#    whose /run/systemd/system exists, so the systemd branch runs) for a
#    first install and an upgrade, and prerm/postrm for removal and purge.
# 5. lintian: no errors or warnings that are not overridden.
#
# Takes about 5 s. Environment: CHECK_KEEP=1 keeps the work directory.
# Needs root for step 4 (unshare); installs what it misses (lintian,
# openssl, man-db, systemd, binutils, and strace for step 3) with apt-get
# when it runs as root.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
version="$(dpkg-parsechangelog -l "$here/changelog" -S Version)"
deb="${1:-$repo/target/debian/mtlsd_${version}_amd64.deb}"
[ -f "$deb" ] || { echo "error: no package at $deb (run deploy/debian/build)" >&2; exit 1; }
deb="$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")"

passed=0
failed=0
pass() { printf 'PASS  %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'FAIL  %s\n' "$*"; failed=$((failed + 1)); }
not() { ! "$@"; }
check() {
    # check DESCRIPTION COMMAND...: pass when COMMAND succeeds.
    local what="$1"
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

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
need lintian lintian
need openssl openssl
need man man-db
need systemd-sysusers systemd
need readelf binutils
need unshare util-linux

work="$(mktemp -d /tmp/mtlsd-deb-check.XXXXXX)"
cleanup() {
    [ -n "${CHECK_KEEP:-}" ] || rm -rf "$work"
    printf 'debian package checks: %d passed, %d failed\n' "$passed" "$failed"
}
trap cleanup EXIT
# mtlsd reads every MTLSD_* variable as a config override.
while read -r var; do unset "$var"; done < <(env | sed -n 's/^\(MTLSD_[A-Za-z0-9_]*\)=.*/\1/p')

# --- 1. control data -----------------------------------------------------
field() { dpkg-deb -f "$deb" "$1"; }
check "Package: mtlsd" [ "$(field Package)" = mtlsd ]
check "Version: $version (the changelog's newest entry)" [ "$(field Version)" = "$version" ]
check "Architecture: amd64" [ "$(field Architecture)" = amd64 ]
check "file name is mtlsd_${version}_amd64.deb" [ "$(basename "$deb")" = "mtlsd_${version}_amd64.deb" ]
depends="$(field Depends)"
check "Depends: libc6 (from the binary's shared libraries): $depends" grep -q 'libc6' <<<"$depends"
check "Depends: a systemd-sysusers provider" \
    grep -q 'systemd | systemd-standalone-sysusers | systemd-sysusers' <<<"$depends"
check "Suggests: softhsm2 (a key in a token)" grep -qw softhsm2 <<<"$(field Suggests)"
mkdir -p "$work/control"
dpkg-deb -e "$deb" "$work/control"
check "no conffiles (nothing under /etc is the package's)" [ ! -s "$work/control/conffiles" ]

# --- 2. contents ---------------------------------------------------------
dpkg-deb -c "$deb" >"$work/listing"
awk '{ print $6 }' "$work/listing" | sed 's|^\./|/|; s|/$||' | sort >"$work/contents"
expect_files=(
    /usr/bin/mtlsd
    /lib/systemd/system/mtlsd.service
    /lib/systemd/system/mtlsd-retry.path
    /lib/systemd/system/mtlsd-retry.service
    /usr/lib/sysusers.d/mtlsd.conf
    /usr/share/man/man8/mtlsd.8.gz
    /usr/share/bash-completion/completions/mtlsd
    /usr/share/zsh/vendor-completions/_mtlsd
    /usr/share/fish/vendor_completions.d/mtlsd.fish
    /usr/share/doc/mtlsd/copyright
    /usr/share/doc/mtlsd/changelog.Debian.gz
    /usr/share/doc/mtlsd/README.md
    /usr/share/doc/mtlsd/examples/mtlsd.toml
    /usr/share/doc/mtlsd/examples/inventory.toml
    /usr/share/doc/mtlsd/examples/mtlsd-pkcs11.conf
    /usr/share/lintian/overrides/mtlsd
)
for f in "${expect_files[@]}"; do
    check "contains $f" grep -qx "$f" "$work/contents"
done
check "nothing under /etc (no conffile at /etc/mtlsd/mtlsd.toml)" not grep -q '^/etc' "$work/contents"
check "/usr/bin/mtlsd is root:root 0755" grep -q '^-rwxr-xr-x root/root .* \./usr/bin/mtlsd$' "$work/listing"
check "every file and directory is root:root" not grep -v ' root/root ' "$work/listing"

root="$work/root"
dpkg -x "$deb" "$root"
bin="$root/usr/bin/mtlsd"
check "md5sums cover every file and match" \
    test -s "$work/control/md5sums" -a "$(wc -l <"$work/control/md5sums")" -eq "$(grep -c '^-' "$work/listing")"
md5sums_match() { (cd "$root" && md5sum --quiet -c "$work/control/md5sums"); }
check "md5sums match the unpacked files" md5sums_match
check "/usr/bin/mtlsd is stripped (no .symtab, no DWARF)" \
    not grep -Eq ' \.(symtab|debug_(info|line|abbrev|str|ranges|aranges|loc))' <(readelf -S --wide "$bin")
check "mtlsd --version prints mtlsd ${version%-*}" [ "$("$bin" --version)" = "mtlsd ${version%-*}" ]

unit="$root/lib/systemd/system/mtlsd.service"
check "unit: ExecStart=/usr/bin/mtlsd run --config /etc/mtlsd/mtlsd.toml" \
    grep -qx 'ExecStart=/usr/bin/mtlsd run --config /etc/mtlsd/mtlsd.toml' "$unit"
check "unit: every Exec*= runs /usr/bin/mtlsd" not grep -v '^Exec[A-Za-z]*=/usr/bin/mtlsd ' <(grep '^Exec' "$unit")
check "unit: names no /usr/local path" not grep -q /usr/local "$unit"
check "unit: ConditionPathExists=/etc/mtlsd/mtlsd.toml in [Unit]" \
    grep -qx 'ConditionPathExists=/etc/mtlsd/mtlsd.toml' <(sed -n '/^\[Unit\]/,/^\[/p' "$unit")
for setting in User=mtlsd StateDirectory=mtlsd ProtectSystem=strict SystemCallFilter=@system-service; do
    check "unit: $setting (the hardening of deploy/systemd/mtlsd.service)" grep -qx "$setting" "$unit"
done

# One page per command: the commands --help lists, plus mtlsd(8); a
# command with commands of its own (rotation, trust) has a page per inner
# command instead (mtlsd-rotation-check).
list_commands() {
    # list_commands [COMMAND]: the commands `mtlsd [COMMAND] --help` lists.
    "$bin" "$@" --help | sed -n '/^Commands:/,/^$/p' | sed -n 's/^  \([a-z][a-z-]*\) .*/\1/p' | grep -vx help
}
commands=()
while read -r command; do
    mapfile -t inner < <(list_commands "$command" || true)
    if [ "${#inner[@]}" -eq 0 ]; then
        commands+=("$command")
    else
        commands+=("${inner[@]/#/$command-}")
    fi
done < <(list_commands)
check "--help lists commands (${commands[*]})" [ "${#commands[@]}" -ge 6 ]
man_dir="$root/usr/share/man/man8"
for page in mtlsd "${commands[@]/#/mtlsd-}"; do
    file="$man_dir/$page.8.gz"
    if [ ! -f "$file" ]; then
        fail "man page $page(8) is missing"
        continue
    fi
    rendered="$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l "$file" 2>"$work/man.err")" || true
    if [ -s "$work/man.err" ] || ! grep -q "^NAME" <<<"$rendered" || ! grep -q "SYNOPSIS" <<<"$rendered"; then
        fail "man -l $page.8.gz renders (NAME, SYNOPSIS) without warnings:"
        sed 's/^/      /' "$work/man.err"
    else
        pass "man -l $page.8.gz renders (NAME, SYNOPSIS) without warnings"
    fi
done
check "no man page for a command that does not exist" \
    [ "$(find "$man_dir" -name '*.8.gz' | wc -l)" -eq $((${#commands[@]} + 1)) ]
gzip_without_timestamp() {
    local f
    for f in "$@"; do
        gzip -t "$f" && [ "$(od -An -tu1 -j4 -N4 "$f" | tr -d ' ')" = 0000 ] || return 1
    done
}
check "man pages are gzipped without timestamp (gzip -n)" gzip_without_timestamp "$man_dir"/*.gz

bash_completes() { bash -c 'source "$0" && complete -p mtlsd >/dev/null' "$1"; }
check "bash completion loads and completes mtlsd" bash_completes "$root/usr/share/bash-completion/completions/mtlsd"
check "zsh completion is a #compdef mtlsd file" \
    grep -qx '#compdef mtlsd' <(head -1 "$root/usr/share/zsh/vendor-completions/_mtlsd")
check "fish completion completes mtlsd's commands" \
    grep -q "complete -c mtlsd .*-a \"run\"" "$root/usr/share/fish/vendor_completions.d/mtlsd.fish"

# The sysusers file, applied to an empty root.
mkdir -p "$work/sysroot/etc"
if systemd-sysusers --root="$work/sysroot" "$root/usr/lib/sysusers.d/mtlsd.conf" >"$work/sysusers.log" 2>&1; then
    passwd_line="$(grep '^mtlsd:' "$work/sysroot/etc/passwd" || true)"
    IFS=: read -r _ _ uid gid _ home shell <<<"$passwd_line" || true
    check "sysusers.d creates system user mtlsd, no shell, no home: $passwd_line" \
        test "${uid:-1000}" -lt 1000 -a "${home:-}" = /nonexistent -a "${shell:-}" = /usr/sbin/nologin
    check "sysusers.d creates group mtlsd (gid ${gid:-})" grep -q "^mtlsd:x:${gid:-none}:" "$work/sysroot/etc/group"
else
    fail "systemd-sysusers failed:"
    sed 's/^/      /' "$work/sysusers.log"
fi

doc="$root/usr/share/doc/mtlsd"
check "changelog.Debian.gz: gzip, newest entry $version" \
    test "$(zcat "$doc/changelog.Debian.gz" | dpkg-parsechangelog -l- -S Version)" = "$version"
check "copyright: DEP-5" grep -qx 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/' \
    <(head -1 "$doc/copyright")
check "copyright: Apache-2.0 with its common-licenses text" \
    grep -q '/usr/share/common-licenses/Apache-2.0' "$doc/copyright"

# The example configuration, with throw-away material for its host db1.
tls="$work/tls"
mkdir -p "$tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=example mesh CA" -keyout "$tls/ca.key" -out "$tls/mesh-ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=db1" \
    -keyout "$tls/host.key" -out "$tls/host.csr" 2>/dev/null
printf '%s\n' "subjectAltName=DNS:db1.cluster.example,IP:10.0.0.11" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth,clientAuth" >"$tls/ext"
openssl x509 -req -in "$tls/host.csr" -CA "$tls/mesh-ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
    -days 2 -extfile "$tls/ext" -out "$tls/host.crt" 2>/dev/null
chmod 0600 "$tls/host.key"
if env MTLSD_IDENTITY__CERT="$tls/host.crt" MTLSD_IDENTITY__KEY="$tls/host.key" \
    MTLSD_TRUST_DOMAINS__MESH__BUNDLE="$tls/mesh-ca.pem" \
    MTLSD_INVENTORY__PATH="$doc/examples/inventory.toml" \
    MTLSD_STATE_DIR="$work/state" MTLSD_RELOAD__AUDIT_LOG="$work/state/audit.jsonl" \
    "$bin" check --strict --config "$doc/examples/mtlsd.toml" >"$work/example.log" 2>&1; then
    pass "examples/mtlsd.toml and inventory.toml pass mtlsd check --strict (material from openssl)"
else
    fail "examples/mtlsd.toml and inventory.toml fail mtlsd check --strict:"
    sed 's/^/      /' "$work/example.log"
fi

# --- 3. the packaged unit under deploy/systemd/check.sh -------------------
# MANPATH: verify looks up the unit's Documentation=man:… pages, which are
# the package's.
if MANPATH="$root/usr/share/man" MTLSD_BIN="$bin" CHECK_PORT_BASE=27500 \
    "$repo/deploy/systemd/check.sh" "$unit" >"$work/unit-check.log" 2>&1; then
    pass "deploy/systemd/check.sh on the packaged unit and binary:"
else
    fail "deploy/systemd/check.sh on the packaged unit and binary:"
fi
sed 's/^/      /' "$work/unit-check.log"

# --- 4. maintainer scripts never enable or start mtlsd --------------------
stubs="$work/stubs"
mkdir -p "$stubs"
# Each stub logs its command line to $CALLS; deb-systemd-helper answers as
# for a unit never installed before and never enabled.
# shellcheck disable=SC2016
for cmd in systemd-sysusers install deb-systemd-invoke systemctl deb-systemd-helper; do
    {
        echo '#!/bin/sh'
        echo "echo \"$cmd \$*\" >>\"\$CALLS\""
        [ "$cmd" = deb-systemd-helper ] && echo 'case "$*" in *debian-installed*|*was-enabled*) exit 1 ;; esac'
        echo 'exit 0'
    } >"$stubs/$cmd"
done
chmod 0755 "$stubs"/*
run_script() {
    # run_script NAME ARGS...: prints the commands it called, one a line.
    local calls="$work/calls.$1.$#"
    : >"$calls"
    # shellcheck disable=SC2016
    unshare --mount --propagation private sh -c '
        mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system &&
        CALLS="$1" PATH="$2:$PATH" DPKG_ROOT="$3" sh -e "$4" "$5" ${6:+"$6"}
    ' _ "$calls" "$stubs" "$work/dpkg-root" "$work/control/$1" "${@:2}" || echo "EXIT-FAILED"
    cat "$calls"
}
mkdir -p "$work/dpkg-root"
first="$(run_script postinst configure)"
check "postinst configure (first install) creates the user" grep -q '^systemd-sysusers.* mtlsd.conf$' <<<"$first"
check "postinst configure (first install) creates /etc/mtlsd root:mtlsd 0750" \
    grep -q '^install -d -o root -g mtlsd -m 0750 .*/etc/mtlsd$' <<<"$first"
check "postinst configure (first install) neither enables nor starts mtlsd" \
    not grep -Eq 'EXIT-FAILED|deb-systemd-helper enable|deb-systemd-invoke|systemctl .*(start|enable)' <<<"$first"
upgrade="$(run_script postinst configure 0.0.9-1)"
check "postinst configure OLD (upgrade) try-restarts mtlsd (only if it runs)" \
    grep -qx 'deb-systemd-invoke try-restart mtlsd.service' <<<"$upgrade"
check "postinst configure OLD (upgrade) neither enables nor starts mtlsd" \
    not grep -Eq 'EXIT-FAILED|deb-systemd-helper enable|deb-systemd-invoke (start|restart)|systemctl .*(start|enable)' <<<"$upgrade"
check "prerm upgrade leaves mtlsd running" not grep -Eq 'EXIT-FAILED|stop' <<<"$(run_script prerm upgrade 0.1.0-2)"
check "prerm remove stops mtlsd" grep -qx 'deb-systemd-invoke stop mtlsd.service' <<<"$(run_script prerm remove)"
mkdir -p "$work/dpkg-root/var/lib/mtlsd" "$work/dpkg-root/etc/mtlsd/tls"
touch "$work/dpkg-root/var/lib/mtlsd/audit.jsonl" "$work/dpkg-root/etc/mtlsd/mtlsd.toml"
purge="$(run_script postrm purge)"
check "postrm purge runs" not grep -q EXIT-FAILED <<<"$purge"
check "postrm purge removes the state directory /var/lib/mtlsd" test ! -e "$work/dpkg-root/var/lib/mtlsd"
check "postrm purge keeps /etc/mtlsd with the files put there" test -f "$work/dpkg-root/etc/mtlsd/mtlsd.toml"

# --- 5. lintian -------------------------------------------------------------
if lintian --fail-on error,warning "$deb" >"$work/lintian.log" 2>&1; then
    pass "lintian: no errors or warnings (overrides: $(grep -cv '^#\|^$' "$root/usr/share/lintian/overrides/mtlsd" || true))"
else
    fail "lintian:"
    sed 's/^/      /' "$work/lintian.log"
fi

[ "$failed" -eq 0 ]
