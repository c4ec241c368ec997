#!/usr/bin/env bash
# Tests for deploy/ansible (and the systemd unit that the role templates).
#
#   deploy/ansible/tests/run.sh [PATH_TO_MTLSD]
#
# The mtlsd binary: the argument, else $MTLSD_BIN, else target/debug/mtlsd of
# this repository. Needs root (the role creates the system user mtlsd, and
# the deployed daemons run as that user); nothing outside a temporary
# directory is touched except that system user and group, which stay (other
# tests on this machine, such as the cluster rig, may be using them). Ports:
# TEST_PORT_BASE (default 28400) + 1..33 and the unit check's +40..+483, on
# 127.0.0.1 and 127.0.0.11. KEEP=1 keeps the temporary directory.
#
# What it checks, in order:
#  1. the pinned tools (requirements.txt) install into a venv under /tmp;
#  2. ansible-lint passes with the production profile;
#  3. ansible-playbook --syntax-check passes for every playbook, and
#     site.yml does not use pki_internal_ca;
#  4. each role's defaults/main.yml matches its meta/argument_specs.yml;
#  5. the role's unit template rendered with the defaults is byte for byte
#     deploy/systemd/mtlsd.service, and deploy/systemd/check.sh passes for
#     it and for the variant with a port below 1024 (CAP_NET_BIND_SERVICE);
#     the drop-in of mtlsd_install=deb carries the site settings (and the
#     capability only for a port below 1024);
#     the token drop-in (mtlsd_identity_key_uri) rendered with the defaults
#     is deploy/systemd/mtlsd-pkcs11.conf, and for a hardware token sets
#     PrivateDevices=no with only the DeviceAllow= entries given;
#  6. dev-ca.yml applied with -c local to three inventory hosts (db1, api1,
#     hv1), each into its own throw-away root (mtlsd_supervisor=external),
#     succeeds; `mtlsd check` accepts every host's result; owners and modes
#     are those of plan decision D7; the rendered inventory has each host's
#     SANs and roles; the certificates carry the inventory's SANs and
#     nothing the certificate request asked for;
#  7. db1 and api1 run from their roots as user mtlsd; a plaintext round
#     trip api1 (outbound) -> mTLS -> db1 (inbound) -> echo works; hv1's
#     certificate is refused by db1 with role_not_allowed (the rendered
#     inventory is what decides);
#  8. a second run reports changed=0 for every host;
#  9. the staged set is checked as one before it replaces the live one: a
#     bad listener (misspelt key), an invalid role name, and a listen
#     address not on this host (192.0.2.1, mtlsd check --bind) each fail
#     the play, leave the live files untouched and the daemon serving, and
#     fail again on a re-run; a listener on a port another process holds
#     (which only the reload finds) fails the reload: the previous set is
#     back in place and reloaded, the play fails with mtlsd's reason, and
#     again on a re-run;
# 10. a forced re-issue of db1's certificate reloads, does not restart;
#     the same db1 process then serves the new serial (openssl s_client),
#     its audit log has the applied admin reload, and the round trip still
#     works;
# 11. changing admin.listen: mtlsd check --compare says restart, and the
#     role (external supervisor) asks the operator to restart;
# 12. a CA rotation in three phases (pki_internal_ca generations 1 -> 2 with
#     the overlap bundle) keeps the mesh working after every phase, with the
#     same two processes, and ends with leaves and a bundle of generation 2;
#     rotation-check.yml stops between the phases while a host is not done
#     (naming the host without a daemon, a leaf still of generation 1, a
#     peer not seen yet) and passes once the phase is done everywhere;
# 13. hv1 joins by fingerprint: mtlsd_trust_bootstrap_from (db1's bootstrap
#     endpoint) with the generation-2 CA's SHA-256 fetches the bundle
#     instead of copying it: hv1's bundle is db1's byte for byte, its
#     mtlsd.toml pins the mesh domain, mtlsd check accepts it, and a second
#     run is changed=0; with the generation-1 CA's SHA-256 (a wrong pin) the
#     play fails naming both fingerprints and hv1's live files stay as they
#     were; db1 counted every bundle it served;
# then stops the daemons by PID and cleans up, also on failure.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
ansible_dir="$(cd "$here/.." && pwd)"
repo="$(cd "$ansible_dir/../.." && pwd)"
bin="${1:-${MTLSD_BIN:-$repo/target/debug/mtlsd}}"
# mtlsd reads every MTLSD_* variable as a config override (and refuses
# unknown keys), so none may reach it from this script's environment.
unset MTLSD_BIN
while read -r var; do unset "$var"; done < <(env | sed -n 's/^\(MTLSD_[A-Za-z0-9_]*\)=.*/\1/p')
port_base="${TEST_PORT_BASE:-28400}"

passed=0
failed=0
step() { printf '\n==> %s\n' "$*"; }
pass() { printf 'PASS  %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'FAIL  %s\n' "$*"; failed=$((failed + 1)); }
die() { fail "$*"; exit 1; }
check() {
    # check DESCRIPTION COMMAND...: PASS when COMMAND succeeds.
    local what="$1"
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

[ "$(id -u)" -eq 0 ] || { echo "error: run as root (the role creates a system user)" >&2; exit 1; }
[ -x "$bin" ] || { echo "error: no mtlsd binary at $bin (pass its path as the argument)" >&2; exit 1; }
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

apt_updated=""
need_apt() {
    # need_apt COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ -z "$apt_updated" ]; then
        "$repo/scripts/apt-quiet" update
        apt_updated=1
    fi
    "$repo/scripts/apt-quiet" install "$2"
}
need_apt openssl openssl
need_apt setpriv util-linux
need_apt python3 python3
need_apt curl curl

work="$(mktemp -d /tmp/mtlsd-deploy-test.XXXXXX)"
chmod 0755 "$work" # the deployed daemons run as mtlsd and must reach their roots
pids=()
cleanup() {
    local rc=$?
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "${KEEP:-}" ]; then
        echo "kept $work"
    else
        rm -rf "$work"
    fi
    printf '\ndeploy tests: %d passed, %d failed\n' "$passed" "$failed"
    if [ "$rc" -eq 0 ] && [ "$failed" -ne 0 ]; then rc=1; fi
    exit "$rc"
}
trap cleanup EXIT

# --- 1. tools -------------------------------------------------------------
step "pinned tools"
venv="/tmp/mtlsd-ansible-venv-$(sha256sum "$ansible_dir/requirements.txt" | cut -c1-12)"
if [ ! -f "$venv/.complete" ]; then
    rm -rf "$venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        need_apt false python3-venv
        rm -rf "$venv"
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$ansible_dir/requirements.txt"
    touch "$venv/.complete"
fi
export PATH="$venv/bin:$PATH"
export ANSIBLE_HOME="$work/ansible-home" ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
export ANSIBLE_LOCAL_TEMP="$work/ansible-home/tmp" ANSIBLE_REMOTE_TEMP="$work/ansible-home/remote-tmp"
export ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_CONFIG="$ansible_dir/ansible.cfg"
# The role needs no facts unless mtlsd_sans_from_facts is set; skipping
# them (and pipelining modules) keeps the nine plays below fast.
export ANSIBLE_GATHERING=explicit ANSIBLE_PIPELINING=1
export NO_COLOR=1 PY_COLORS=0
ansible_version="$(ansible --version)"
lint_version="$(ansible-lint --nocolor --version 2>/dev/null)"
lint_version="${lint_version%%$'\n'*}"
pass "tools: ${ansible_version%%$'\n'*}, ${lint_version%% using*}"
cd "$ansible_dir"

# --- 2. ansible-lint --------------------------------------------------------
step "ansible-lint (production profile)"
if ansible-lint --nocolor --profile production >"$work/lint.log" 2>&1; then
    pass "ansible-lint --profile production: $(tail -1 "$work/lint.log")"
else
    fail "ansible-lint --profile production:"
    sed 's/^/      /' "$work/lint.log"
fi

# --- 3. syntax check ----------------------------------------------------------
step "syntax check"
for playbook in site.yml dev-ca.yml push-inventory.yml rotation-check.yml; do
    if ansible-playbook -i inventory/example.yml --syntax-check "$playbook" >"$work/syntax.log" 2>&1; then
        pass "ansible-playbook --syntax-check $playbook"
    else
        fail "ansible-playbook --syntax-check $playbook:"
        sed 's/^/      /' "$work/syntax.log"
    fi
done
check "site.yml does not use pki_internal_ca" bash -c '! grep -q pki_internal_ca site.yml'

# --- 4. argument specs match defaults ------------------------------------------
step "argument specs"
for role in mtlsd pki_internal_ca; do
    if "$venv/bin/python" - "roles/$role" >"$work/spec.log" 2>&1 <<'PY'
import sys, yaml
role = sys.argv[1]
defaults = yaml.safe_load(open(f"{role}/defaults/main.yml")) or {}
options = yaml.safe_load(open(f"{role}/meta/argument_specs.yml"))["argument_specs"]["main"]["options"]
problems = []
for name, spec in options.items():
    if not spec.get("description"):
        problems.append(f"{name}: no description")
    if spec.get("required"):
        if name in defaults:
            problems.append(f"{name}: required, but has a default in defaults/main.yml")
    elif name not in defaults:
        problems.append(f"{name}: documented, missing from defaults/main.yml")
    elif spec.get("default") != defaults[name]:
        problems.append(f"{name}: default {spec.get('default')!r} in the spec, {defaults[name]!r} in defaults/main.yml")
for name in defaults:
    if name not in options:
        problems.append(f"{name}: in defaults/main.yml, not documented in meta/argument_specs.yml")
print("\n".join(problems) or f"{len(options)} variables")
sys.exit(1 if problems else 0)
PY
    then
        pass "roles/$role: defaults/main.yml matches meta/argument_specs.yml ($(cat "$work/spec.log"))"
    else
        fail "roles/$role: defaults/main.yml vs meta/argument_specs.yml:"
        sed 's/^/      /' "$work/spec.log"
    fi
done

# --- 5. the unit template -------------------------------------------------------
step "systemd unit"
render_unit() {
    # render_unit DEST [EXTRA_VARS_JSON]
    ansible localhost -i localhost, -c local -m ansible.builtin.template \
        -a "src=roles/mtlsd/templates/mtlsd.service.j2 dest=$1 mode=0644" \
        -e @roles/mtlsd/defaults/main.yml -e "${2:-{\}}" \
        -e ansible_python_interpreter="$venv/bin/python" >"$work/render.log" 2>&1 ||
        { sed 's/^/      /' "$work/render.log"; return 1; }
}
mkdir -p "$work/units/default" "$work/units/low-port"
if render_unit "$work/units/default/mtlsd.service" &&
    diff -u "$repo/deploy/systemd/mtlsd.service" "$work/units/default/mtlsd.service" >"$work/unit.diff"; then
    pass "mtlsd.service.j2 with the role defaults renders to deploy/systemd/mtlsd.service"
else
    fail "mtlsd.service.j2 with the role defaults differs from deploy/systemd/mtlsd.service:"
    sed 's/^/      /' "$work/unit.diff" 2>/dev/null || true
fi
if MTLSD_BIN="$bin" CHECK_PORT_BASE="$((port_base + 40))" \
    "$repo/deploy/systemd/check.sh" "$repo/deploy/systemd/mtlsd.service" >"$work/unit-check.log" 2>&1; then
    pass "deploy/systemd/check.sh deploy/systemd/mtlsd.service:"
else
    fail "deploy/systemd/check.sh deploy/systemd/mtlsd.service:"
fi
sed 's/^/      /' "$work/unit-check.log"
if render_unit "$work/units/low-port/mtlsd.service" \
    '{"mtlsd_inbound": [{"name": "api", "listen": "0.0.0.0:443", "upstream": "127.0.0.1:13000"}]}' &&
    grep -qx 'AmbientCapabilities=CAP_NET_BIND_SERVICE' "$work/units/low-port/mtlsd.service" &&
    ! grep -q '^PrivateUsers=' "$work/units/low-port/mtlsd.service" &&
    MTLSD_BIN=/nonexistent "$repo/deploy/systemd/check.sh" "$work/units/low-port/mtlsd.service" \
        >"$work/unit-check.log" 2>&1; then
    pass "unit for a listener on :443 gets CAP_NET_BIND_SERVICE and passes check.sh:"
else
    fail "unit for a listener on :443 (CAP_NET_BIND_SERVICE):"
fi
sed 's/^/      /' "$work/unit-check.log"
for f in mtlsd-retry.path mtlsd-retry.service; do
    check "roles/mtlsd/files/$f is deploy/systemd/$f" cmp -s "roles/mtlsd/files/$f" "$repo/deploy/systemd/$f"
done
# mtlsd_install=deb: the package's unit plus the drop-in of site settings.
render_dropin() {
    # render_dropin DEST [EXTRA_VARS_JSON]
    ansible localhost -i localhost, -c local -m ansible.builtin.template \
        -a "src=roles/mtlsd/templates/mtlsd-site.conf.j2 dest=$1 mode=0644" \
        -e @roles/mtlsd/defaults/main.yml -e @roles/mtlsd/vars/main.yml -e "${2:-{\}}" \
        -e ansible_python_interpreter="$venv/bin/python" >"$work/render.log" 2>&1 ||
        { sed 's/^/      /' "$work/render.log"; return 1; }
}
if render_dropin "$work/units/default/site.conf" &&
    grep -qx 'TimeoutStopSec=45' "$work/units/default/site.conf" &&
    ! grep -q 'CAP_NET_BIND_SERVICE\|PrivateUsers\|IPAddress' "$work/units/default/site.conf"; then
    pass "deb drop-in with the defaults: stop timeout and LimitNOFILE only, no capability"
else
    fail "deb drop-in with the defaults:"
    sed 's/^/      /' "$work/units/default/site.conf" 2>/dev/null || true
fi
if render_dropin "$work/units/low-port/site.conf" \
    '{"mtlsd_inbound": [{"name": "api", "listen": "0.0.0.0:443", "upstream": "127.0.0.1:13000"}], "mtlsd_ip_address_allow": ["127.0.0.0/8", "10.0.0.0/8"], "mtlsd_drain_timeout_seconds": 10}' &&
    grep -qx 'CapabilityBoundingSet=CAP_NET_BIND_SERVICE' "$work/units/low-port/site.conf" &&
    grep -qx 'AmbientCapabilities=CAP_NET_BIND_SERVICE' "$work/units/low-port/site.conf" &&
    grep -qx 'PrivateUsers=no' "$work/units/low-port/site.conf" &&
    grep -qx 'IPAddressAllow=127.0.0.0/8 10.0.0.0/8' "$work/units/low-port/site.conf" &&
    grep -qx 'TimeoutStopSec=25' "$work/units/low-port/site.conf"; then
    pass "deb drop-in for a listener on :443 with an IP fence: CAP_NET_BIND_SERVICE, PrivateUsers=no, IPAddressAllow, TimeoutStopSec"
else
    fail "deb drop-in for a listener on :443:"
    sed 's/^/      /' "$work/units/low-port/site.conf" 2>/dev/null || true
fi

# A key in a PKCS#11 token: the drop-in that relaxes only what the token
# needs. With the role's defaults (SoftHSM2) it is deploy/systemd/
# mtlsd-pkcs11.conf byte for byte, which deploy/systemd/check.sh audits
# (above); for a hardware token it opens only the devices given.
render_pkcs11() {
    # render_pkcs11 DEST [EXTRA_VARS_JSON]
    ansible localhost -i localhost, -c local -m ansible.builtin.template \
        -a "src=roles/mtlsd/templates/mtlsd-pkcs11.conf.j2 dest=$1 mode=0644" \
        -e @roles/mtlsd/defaults/main.yml -e @roles/mtlsd/vars/main.yml \
        -e '{"mtlsd_identity_key_uri": "pkcs11:token=mesh;object=host;id=%01;type=private"}' -e "${2:-{\}}" \
        -e ansible_python_interpreter="$venv/bin/python" >"$work/render.log" 2>&1 ||
        { sed 's/^/      /' "$work/render.log"; return 1; }
}
mkdir -p "$work/units/token" "$work/units/hardware-token"
if render_pkcs11 "$work/units/token/pkcs11.conf" &&
    diff -u "$repo/deploy/systemd/mtlsd-pkcs11.conf" "$work/units/token/pkcs11.conf" >"$work/unit.diff"; then
    pass "mtlsd-pkcs11.conf.j2 with the role defaults renders to deploy/systemd/mtlsd-pkcs11.conf (LoadCredential, ReadWritePaths, SupplementaryGroups)"
else
    fail "mtlsd-pkcs11.conf.j2 with the role defaults differs from deploy/systemd/mtlsd-pkcs11.conf:"
    sed 's/^/      /' "$work/unit.diff" 2>/dev/null || true
fi
if render_pkcs11 "$work/units/hardware-token/pkcs11.conf" \
    '{"mtlsd_pkcs11_module": "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so", "mtlsd_pkcs11_token_dir": "", "mtlsd_pkcs11_group": "", "mtlsd_pkcs11_device_allow": ["char-usb_device rw"]}' &&
    grep -qx 'PrivateDevices=no' "$work/units/hardware-token/pkcs11.conf" &&
    grep -qx 'DeviceAllow=char-usb_device rw' "$work/units/hardware-token/pkcs11.conf" &&
    grep -qx 'LoadCredential=mtlsd-pin:/etc/mtlsd/credentials/mtlsd-pin' "$work/units/hardware-token/pkcs11.conf" &&
    ! grep -q '^ReadWritePaths=\|^SupplementaryGroups=' "$work/units/hardware-token/pkcs11.conf" &&
    DROPIN="$work/units/hardware-token/pkcs11.conf" MTLSD_BIN=/nonexistent \
        "$repo/deploy/systemd/check.sh" "$repo/deploy/systemd/mtlsd.service" >"$work/unit-check.log" 2>&1; then
    pass "token drop-in for a hardware token: PrivateDevices=no with only its DeviceAllow=, no token directory or group; passes check.sh"
else
    fail "token drop-in for a hardware token:"
    sed 's/^/      /' "$work/units/hardware-token/pkcs11.conf" "$work/unit-check.log" 2>/dev/null || true
fi

# --- 6. apply dev-ca.yml into throw-away roots ------------------------------------
step "apply dev-ca.yml to db1, api1, hv1 (-c local, each into its own root)"
echo_port=$((port_base + 1))
db1_admin=127.0.0.1:$((port_base + 11))
db1_in=127.0.0.11:$((port_base + 12))
db1_bootstrap=127.0.0.11:$((port_base + 14))
api1_admin=127.0.0.1:$((port_base + 21))
api1_out=127.0.0.1:$((port_base + 22))
hv1_admin=127.0.0.1:$((port_base + 31))
hv1_out=127.0.0.1:$((port_base + 32))
cat >"$work/inventory.yml" <<EOF
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: "$venv/bin/python"
    ansible_become: false
    mtlsd_supervisor: external
    mtlsd_root: "$work/hosts/{{ inventory_hostname }}"
    mtlsd_install: binary
    mtlsd_binary_src: "$bin"
    mtlsd_cluster_name: sf-test
    mtlsd_dns_domain: sf.test
    mtlsd_role_groups:
      database: database
      api: api
      monitoring: monitoring
      hypervisor: hypervisor
    pki_internal_ca_dir: "$work/pki"
  children:
    mtlsd:
      children:
        database:
          hosts:
            db1:
              mtlsd_mesh_address: 127.0.0.11
              mtlsd_admin_listen: "$db1_admin"
              # Only the reload handler can make db1 pick up a new
              # certificate: the test proves the handler works.
              mtlsd_reload_watch: false
              # The trust bundles for hv1 to join by fingerprint (step 13).
              mtlsd_bootstrap_listen: "$db1_bootstrap"
              mtlsd_inbound:
                - name: database
                  listen: "$db1_in"
                  upstream: "127.0.0.1:$echo_port"
                  allow_roles: [api]
                  handshake_timeout: 5s
                # Not exercised by traffic: proves that routes (a list of
                # dicts) render as valid TOML that mtlsd accepts.
                - name: database-grpc
                  listen: "127.0.0.11:$((port_base + 13))"
                  upstream: "127.0.0.1:$((port_base + 2))"
                  protocol: grpc
                  allow_roles: [api, hypervisor]
                  routes:
                    - path: /sf.Database/Delete*
                      allow_roles: [api]
        api:
          hosts:
            api1:
              # All three "hosts" share this machine's /etc/passwd: only db1
              # creates the user, or parallel useradd runs race for its lock.
              mtlsd_manage_user: false
              mtlsd_mesh_address: 127.0.0.21
              mtlsd_admin_listen: "$api1_admin"
              mtlsd_extra_sans: ["URI:spiffe://sf-test/host/api1"]
              mtlsd_outbound:
                - name: to-db1
                  listen: "$api1_out"
                  upstream: "$db1_in"
                  server_name: db1.sf.test
                  expect_roles: [database]
        monitoring:
          hosts:
            api1:
        hypervisor:
          hosts:
            hv1:
              mtlsd_manage_user: false
              mtlsd_mesh_address: 127.0.0.31
              mtlsd_admin_listen: "$hv1_admin"
              mtlsd_outbound:
                - name: to-db1
                  listen: "$hv1_out"
                  upstream: "$db1_in"
                  server_name: db1.sf.test
                  expect_roles: [database]
EOF
play() {
    # play LOG ARGS...: runs dev-ca.yml against the test inventory.
    local log="$1"
    shift
    ansible-playbook -i "$work/inventory.yml" dev-ca.yml "$@" >"$log" 2>&1
}
recap_changed_zero() {
    # Every host of the PLAY RECAP in $1 has changed=0 and failed=0.
    local recap
    recap="$(sed -n '/^PLAY RECAP/,$p' "$1" | grep -E '^[a-z0-9]+ +:')"
    [ -n "$recap" ] && ! printf '%s\n' "$recap" | grep -qvE 'changed=0 .*failed=0'
}
if play "$work/run1.log"; then
    pass "first run of dev-ca.yml: $(sed -n '/^PLAY RECAP/,$p' "$work/run1.log" | grep -cE '^[a-z0-9]+ +:') hosts, no failure"
else
    fail "first run of dev-ca.yml:"
    tail -40 "$work/run1.log" | sed 's/^/      /'
    exit 1
fi

for host in db1 api1 hv1; do
    root="$work/hosts/$host"
    if "$root/usr/local/bin/mtlsd" check --config "$root/etc/mtlsd/mtlsd.toml" >"$work/check-$host.log" 2>&1; then
        pass "$host: mtlsd check accepts the deployed config and material (exit 0)"
    else
        fail "$host: mtlsd check:"
        sed 's/^/      /' "$work/check-$host.log"
    fi
done

layout_ok() {
    local root="$1" bad=0 path want got
    while read -r path want; do
        got="$(stat -L -c '%U:%G %a' "$root$path" 2>/dev/null || echo missing)"
        if [ "$got" != "$want" ]; then
            echo "      $path: $got, want $want"
            bad=1
        fi
    done <<'D7'
/etc/mtlsd root:mtlsd 750
/etc/mtlsd/mtlsd.toml root:mtlsd 640
/etc/mtlsd/inventory.toml root:mtlsd 640
/etc/mtlsd/tls root:mtlsd 750
/etc/mtlsd/tls/host.crt root:mtlsd 644
/etc/mtlsd/tls/host.key mtlsd:mtlsd 600
/etc/mtlsd/tls/mesh-ca.pem root:mtlsd 644
/etc/mtlsd/sets root:mtlsd 750
/etc/mtlsd/sets/next/tls/host.key mtlsd:mtlsd 600
/var/lib/mtlsd mtlsd:mtlsd 700
/var/lib/mtlsd/audit.jsonl mtlsd:mtlsd 600
/usr/local/bin/mtlsd root:root 755
D7
    return "$bad"
}
check "db1: owners and modes are those of decision D7" layout_ok "$work/hosts/db1"
links_ok() {
    # Every live path is a relative link through `current` into a set.
    local etc="$work/hosts/db1/etc/mtlsd" f want
    for f in mtlsd.toml inventory.toml tls/host.key tls/host.crt tls/mesh-ca.pem; do
        case "$f" in */*) want="../current/$f" ;; *) want="current/$f" ;; esac
        [ "$(readlink "$etc/$f")" = "$want" ] || { echo "      $f -> $(readlink "$etc/$f")"; return 1; }
    done
    [[ "$(readlink "$etc/current")" == sets/[0-9a-f]* ]] && cmp -s "$etc/sets/next/mtlsd.toml" "$etc/mtlsd.toml"
}
check "db1: the live paths are links through current into a set (the staged set is the live one)" links_ok
login_shell() { getent passwd mtlsd | cut -d: -f7; }
check "system user mtlsd has no login shell" test "$(login_shell)" = /usr/sbin/nologin

inventory_ok() {
    "$venv/bin/python" - "$work/hosts/hv1/etc/mtlsd/inventory.toml" <<'PY'
import sys, tomllib
inv = tomllib.load(open(sys.argv[1], "rb"))
want = {
    "db1": {"sans": ["DNS:db1", "DNS:db1.sf.test", "IP:127.0.0.11"], "roles": ["database"]},
    "api1": {"sans": ["DNS:api1", "DNS:api1.sf.test", "IP:127.0.0.21", "URI:spiffe://sf-test/host/api1"],
             "roles": ["api", "monitoring"]},
    "hv1": {"sans": ["DNS:hv1", "DNS:hv1.sf.test", "IP:127.0.0.31"], "roles": ["hypervisor"]},
}
if inv.get("cluster") != "sf-test" or inv.get("hosts") != want:
    print(f"      got {inv}")
    sys.exit(1)
PY
}
check "inventory.toml: groups became roles, host variables became SANs" inventory_ok
check "inventory.toml is the same on every host" \
    bash -c "cmp -s '$work/hosts/db1/etc/mtlsd/inventory.toml' '$work/hosts/hv1/etc/mtlsd/inventory.toml' &&
             cmp -s '$work/hosts/api1/etc/mtlsd/inventory.toml' '$work/hosts/hv1/etc/mtlsd/inventory.toml'"
cert_ok() {
    local text
    text="$(openssl x509 -in "$work/hosts/api1/etc/mtlsd/tls/host.crt" -noout -text)"
    grep -q 'Subject: CN = api1' <<<"$text" &&
        grep -q 'DNS:api1, DNS:api1.sf.test, IP Address:127.0.0.21, URI:spiffe://sf-test/host/api1' <<<"$text" &&
        grep -q 'TLS Web Server Authentication, TLS Web Client Authentication' <<<"$text" &&
        ! grep -q 'ignored-by-the-ca' <<<"$text"
}
check "api1's certificate: CN and SANs from the inventory, serverAuth+clientAuth, nothing from the request" cert_ok

# --- 7. run the deployed daemons -----------------------------------------------
step "run db1 and api1 from their roots as user mtlsd"
"$venv/bin/python" -c '
import socketserver, sys
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
Server(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
' "$echo_port" >"$work/echo.log" 2>&1 &
pids+=("$!")
start_daemon() {
    # start_daemon HOST: runs HOST's mtlsd as user mtlsd; sets daemon_pid.
    local root="$work/hosts/$1"
    setpriv --reuid=mtlsd --regid=mtlsd --init-groups \
        "$root/usr/local/bin/mtlsd" --log-format json run --config "$root/etc/mtlsd/mtlsd.toml" \
        >"$work/$1.log" 2>&1 &
    daemon_pid=$!
    pids+=("$daemon_pid")
    for _ in $(seq 1 100); do
        grep -q '"message":"ready"' "$work/$1.log" && return 0
        kill -0 "$daemon_pid" 2>/dev/null || break
        sleep 0.1
    done
    sed 's/^/      /' "$work/$1.log"
    return 1
}
start_daemon db1 || die "db1's mtlsd did not become ready"
db1_pid=$daemon_pid
start_daemon api1 || die "api1's mtlsd did not become ready"
api1_pid=$daemon_pid
pass "db1 (pid $db1_pid) and api1 (pid $api1_pid) run as user mtlsd from the deployed files"
round_trip() {
    local reply
    reply="$(exec 3<>"/dev/tcp/${api1_out%:*}/${api1_out##*:}" && echo "$1" >&3 && timeout 5 head -1 <&3)" &&
        [ "$reply" = "$1" ]
}
check "round trip: plaintext -> api1 outbound -> mTLS -> db1 inbound -> echo" round_trip "hello through the mesh"
refused_by_role() {
    # hv1 holds the role hypervisor; db1's listener allows only api.
    local reply
    reply="$( (echo "should not pass"; sleep 1) | timeout 5 openssl s_client -quiet -connect "$db1_in" \
        -servername db1.sf.test -cert "$work/pki/hosts/hv1/host.crt" -key "$work/pki/hosts/hv1/host.key" \
        -CAfile "$work/pki/ca-gen1/ca.crt" 2>/dev/null)" || true
    [ -z "$reply" ] && sleep 0.3 && grep -q '"reason":"role_not_allowed"' "$work/db1.log"
}
check "hv1 (role hypervisor) is refused by db1's listener (allow_roles api): role_not_allowed" refused_by_role

# --- 8. second run -------------------------------------------------------------
step "second run"
if play "$work/run2.log" && recap_changed_zero "$work/run2.log"; then
    pass "second run: changed=0 on every host"
else
    fail "second run is not changed=0:"
    grep -E '^(changed|TASK|RUNNING HANDLER|PLAY RECAP|[a-z0-9]+ +:)' "$work/run2.log" | grep -B1 -E '^changed|: ok=' |
        sed 's/^/      /'
fi

# --- 9. a bad set never replaces the live one --------------------------------------
step "bad config, bad inventory, a listen address not on this host, a port in use"
live="$work/hosts/db1/etc/mtlsd/mtlsd.toml"
before="$(sha256sum <"$live")"
if play "$work/run-bad.log" -l db1 \
    -e '{"mtlsd_inbound": [{"name": "database", "lisen": "127.0.0.11:1", "upstream": "127.0.0.1:1"}]}'; then
    fail "a misspelt listener key did not fail the play"
elif grep -q 'inbound\[0\].lisen: unknown key' "$work/run-bad.log" && [ "$before" = "$(sha256sum <"$live")" ] &&
    kill -0 "$db1_pid" 2>/dev/null; then
    pass "a misspelt listener key fails the staged set's mtlsd check (it names inbound[0].lisen); live mtlsd.toml untouched"
else
    fail "bad config: play failed, but not at the check, or the live file changed:"
    grep -E 'fatal|FAILED|unknown key' "$work/run-bad.log" | sed 's/^/      /'
fi

live_inventory="$work/hosts/db1/etc/mtlsd/inventory.toml"
before="$(sha256sum <"$live_inventory")"
if play "$work/run-bad-inventory.log" -l db1 \
    -e '{"mtlsd_role_groups": {"database": "Database", "api": "api", "monitoring": "monitoring", "hypervisor": "hypervisor"}}'; then
    fail "an invalid role name did not fail the play"
elif grep -q 'roles use lowercase letters' "$work/run-bad-inventory.log" &&
    [ "$before" = "$(sha256sum <"$live_inventory")" ]; then
    pass "an invalid role name fails the staged set's mtlsd check; live inventory.toml untouched"
else
    fail "bad inventory: play failed, but not at the check, or the live file changed:"
    grep -E 'fatal|FAILED|roles use' "$work/run-bad-inventory.log" | sed 's/^/      /'
fi

# A listen address that is not on this host: only binding shows it
# (mtlsd check --bind). Twice: the second run must fail again, not find
# "nothing changed".
not_here='{"mtlsd_inbound": [{"name": "database", "listen": "192.0.2.1:'"$((port_base + 12))"'", "upstream": "127.0.0.1:'"$echo_port"'", "allow_roles": ["api"]}]}'
before="$(sha256sum <"$live")"
for attempt in 1 2; do
    if play "$work/run-not-here-$attempt.log" -l db1 -e "$not_here"; then
        fail "attempt $attempt: a listen address not on this host did not fail the play"
    elif grep -q 'listen 192.0.2.1:.*address not on this host' "$work/run-not-here-$attempt.log" &&
        [ "$before" = "$(sha256sum <"$live")" ] && kill -0 "$db1_pid" 2>/dev/null && round_trip "hello $attempt"; then
        pass "attempt $attempt: listen 192.0.2.1 fails the play at mtlsd check --bind, naming the address; live files untouched, db1 serves"
    else
        fail "attempt $attempt: listen 192.0.2.1: the play failed, but not with the reason, or the live file changed:"
        grep -E 'fatal|FAILED|192.0.2.1' "$work/run-not-here-$attempt.log" | sed 's/^/      /'
    fi
done

# A port another process holds: the check (which binds IP:0) cannot see it,
# the reload fails. The previous set must come back, loaded again, and the
# play fail with mtlsd's reason — on a re-run too.
in_use='{"mtlsd_inbound": [{"name": "database", "listen": "'"$db1_in"'", "upstream": "127.0.0.1:'"$echo_port"'", "allow_roles": ["api"], "handshake_timeout": "5s"}, {"name": "squatter", "listen": "127.0.0.1:'"$echo_port"'", "upstream": "127.0.0.1:1"}]}'
before="$(sha256sum <"$live")"
before_current="$(readlink "$work/hosts/db1/etc/mtlsd/current")"
for attempt in 1 2; do
    if play "$work/run-in-use-$attempt.log" -l db1 -e "$in_use"; then
        fail "attempt $attempt: a listener on a port in use did not fail the play"
    elif grep -q 'previous set .* is back in place and loaded again' "$work/run-in-use-$attempt.log" &&
        grep -q "squatter" "$work/run-in-use-$attempt.log" &&
        [ "$before" = "$(sha256sum <"$live")" ] &&
        [ "$before_current" = "$(readlink "$work/hosts/db1/etc/mtlsd/current")" ] &&
        kill -0 "$db1_pid" 2>/dev/null && round_trip "hello in use $attempt"; then
        pass "attempt $attempt: a listener on a port in use: reload refused, previous set back ($before_current) and reloaded, the play fails with mtlsd's reason; db1 serves"
    else
        fail "attempt $attempt: a listener on a port in use:"
        grep -E 'fatal|FAILED|msg' "$work/run-in-use-$attempt.log" | sed 's/^/      /'
    fi
done

# --- 10. rotation: reload, not restart, and the new serial is served -------------
step "force a new certificate for db1"
served_serial() {
    openssl s_client -connect "$db1_in" -servername db1.sf.test \
        -cert "$work/pki/hosts/api1/host.crt" -key "$work/pki/hosts/api1/host.key" \
        -CAfile "$work/pki/ca-gen1/ca.crt" </dev/null 2>/dev/null |
        openssl x509 -noout -serial | cut -d= -f2
}
old_serial="$(served_serial)"
[ -n "$old_serial" ] || die "could not read the serial db1 serves"
if play "$work/run-rotate.log" -l db1 -e pki_internal_ca_force_reissue=true; then
    pass "forced re-issue for db1: play succeeded"
else
    fail "forced re-issue for db1:"
    tail -30 "$work/run-rotate.log" | sed 's/^/      /'
fi
new_serial="$(served_serial)"
file_serial="$(openssl x509 -in "$work/hosts/db1/etc/mtlsd/tls/host.crt" -noout -serial | cut -d= -f2)"
handler_result="$(sed -n '/^TASK \[mtlsd : Reload mtlsd through its admin endpoint\]/{n;p;}' "$work/run-rotate.log")"
check "the reload ran and changed db1 ($handler_result)" \
    grep -q '^changed: \[db1\]' <<<"$handler_result"
check "no restart handler ran" \
    bash -c "! grep -qE '^RUNNING HANDLER \[mtlsd : (Restart mtlsd|Tell the operator)' '$work/run-rotate.log' &&
             sed -n '/^TASK \[mtlsd : Tell the operator to restart mtlsd\]/{n;p;}' '$work/run-rotate.log' | grep -q '^skipping'"
check "db1 is the same process (pid $db1_pid)" kill -0 "$db1_pid"
check "db1 serves the new serial ($old_serial -> $new_serial, file $file_serial)" \
    bash -c "[ -n '$new_serial' ] && [ '$new_serial' != '$old_serial' ] && [ '$new_serial' = '$file_serial' ]"
audit_ok() {
    "$venv/bin/python" - "$work/hosts/db1/var/lib/mtlsd/audit.jsonl" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
last = lines[-1]
identity = [i for i in last["items"] if i["item"] == "identity"]
ok = (last["trigger"] == "admin" and last["result"] == "applied"
      and identity and identity[0]["old"] != identity[0]["new"])
print(f"      last audit line: trigger={last['trigger']} result={last['result']} generation={last['generation']}")
sys.exit(0 if ok else 1)
PY
}
check "db1's audit log: the admin reload applied a new identity" audit_ok
check "round trip after the rotation" round_trip "hello after the rotation"

# --- 11. a restart-only setting: mtlsd says so, the role restarts ------------------
step "restart-only setting"
if play "$work/run-admin.log" -l hv1 -e "mtlsd_admin_listen=127.0.0.1:$((port_base + 33))" &&
    sed -n '/^TASK \[mtlsd : Tell the operator to restart mtlsd\]/,/^TASK/p' "$work/run-admin.log" |
    grep -q 'restart: config.admin'; then
    pass "changing admin.listen: mtlsd check --compare says restart (config.admin); the role asks the operator (external supervisor)"
else
    fail "changing admin.listen did not lead to a restart:"
    grep -E '^(TASK|RUNNING HANDLER|changed|fatal|ok)|restart' "$work/run-admin.log" | sed 's/^/      /'
fi

# --- 12. CA rotation in three phases ------------------------------------------
step "CA rotation: generation 1 -> 2 in three phases"
phase() {
    # phase N GENERATION TRUSTED_JSON [ARGS...]
    local n="$1" generation="$2" trusted="$3"
    shift 3
    if play "$work/run-ca-$n.log" -e "{\"pki_internal_ca_generation\": $generation, \"pki_internal_ca_trusted_generations\": $trusted}" "$@" &&
        kill -0 "$db1_pid" 2>/dev/null && kill -0 "$api1_pid" 2>/dev/null &&
        round_trip "hello in phase $n"; then
        pass "CA rotation phase $n (issuing generation $generation, trusted $trusted${*:+, $*}): play ok, same processes, round trip ok"
    else
        fail "CA rotation phase $n:"
        grep -E '^(fatal|FAILED)' "$work/run-ca-$n.log" | sed 's/^/      /'
    fi
}
rotation_check() {
    # rotation_check LOG ARGS...: runs rotation-check.yml against the test
    # inventory. hv1 is deployed but runs no daemon, so every check but the
    # first is limited to db1 and api1.
    local log="$1"
    shift
    ansible-playbook -i "$work/inventory.yml" rotation-check.yml "$@" >"$log" 2>&1
}
shown() {
    # The arguments, for a PASS/FAIL line: paths under $work and the
    # generation-1 SHA-256 shortened.
    local args="${*//$work\//}"
    echo "${args//${gen1_sha:-none}/GEN1_SHA256}"
}
rotation_done() {
    # rotation_done N LOG ARGS...: rotation-check.yml passes for the N hosts.
    local n="$1" log="$2"
    shift 2
    if rotation_check "$log" "$@" && grep -q ": done on all $n host(s)\"" "$log" && recap_changed_zero "$log"; then
        pass "rotation-check.yml $(shown "$@"): done on all $n hosts, changed=0"
    else
        fail "rotation-check.yml $(shown "$@") did not pass:"
        sed -n '/^TASK \[Show every host/,/^$/p; /^fatal/p' "$log" | sed 's/^/      /'
    fi
}
rotation_blocked() {
    # rotation_blocked WHAT LOG PATTERN... -- ARGS...: rotation-check.yml
    # fails, once, and its output has every PATTERN (grep -F).
    local what="$1" log="$2" patterns=() p missing=""
    shift 2
    while [ "$1" != -- ]; do patterns+=("$1"); shift; done
    shift
    if rotation_check "$log" "$@"; then
        fail "rotation-check.yml $(shown "$@") passed, but $what"
        return
    fi
    for p in "${patterns[@]}"; do grep -qF -- "$p" "$log" || missing+=" [$p]"; done
    if [ -z "$missing" ] && [ "$(grep -c '^fatal: ' "$log")" -eq 1 ] &&
        grep -q '^TASK \[Stop unless the phase is done on every host\]' "$log"; then
        pass "rotation-check.yml $(shown "$@") fails once: $what"
    else
        fail "rotation-check.yml $(shown "$@"): $what, but the failure is not the summary${missing:+ (missing:$missing)}:"
        sed -n '/^TASK \[Show every host/,/^$/p; /^fatal/p' "$log" | sed 's/^/      /'
    fi
}
gen1_ca="$work/pki/ca-gen1/ca.crt"
gen2_ca="$work/pki/ca-gen2/ca.crt"
phase 1 1 '[1, 2]'
check "phase 1: db1's bundle holds both CAs" \
    test "$(grep -c 'BEGIN CERTIFICATE' "$work/hosts/db1/etc/mtlsd/tls/mesh-ca.pem")" -eq 2
# Before phase 2: every host trusts the new CA. A host whose mtlsd does not
# answer (hv1) is not done.
rotation_blocked "hv1 runs no daemon" "$work/rc-add-ca-hv1.log" \
    'NOT done on 1 of 3 host(s): hv1' 'hv1: NOT done: no mtlsd answered' 'db1: done' 'api1: done' \
    -- -e rotation_phase=add-ca -e rotation_ca_file="$gen2_ca"
rotation_done 2 "$work/rc-add-ca.log" -l db1,api1 -e rotation_phase=add-ca -e rotation_ca_file="$gen2_ca" --check
# Phase 2 on api1 alone: db1's leaf is still of generation 1, which db1
# itself and api1 (its peer since the round trip) name as the blocker.
phase 2-api1 2 '[1, 2]' -l api1
gen1_sha="$(openssl x509 -in "$gen1_ca" -outform DER | sha256sum | cut -d' ' -f1)"
rotation_blocked "db1's leaf is still of generation 1" "$work/rc-remove-ca-early.log" \
    'NOT done on 2 of 2 host(s): db1, api1' 'blocker: db1 (this host): this host'"'"'s certificate' \
    'blocker: db1: its certificate (issuer O=mtlsd dev PKI, CN=mtlsd dev CA generation 1) needs this CA' \
    -- -l db1,api1 -e rotation_phase=remove-ca -e rotation_ca="$gen1_sha"
phase 2 2 '[1, 2]'
check "phase 2: db1's certificate is from generation 2" \
    bash -c "openssl x509 -in '$work/hosts/db1/etc/mtlsd/tls/host.crt' -noout -issuer | grep -q 'generation 2'"
# Before phase 3: no host's own leaf needs the old CA, and (after the round
# trip of phase 2, which showed each its peer's new leaf) no peer's either.
rotation_done 2 "$work/rc-reissue.log" -l db1,api1 -e rotation_phase=reissue -e rotation_ca_file="$gen1_ca"
# db1 admits hv1 (database-grpc allows hypervisor) but has never completed a
# handshake with it: whether hv1 still holds a generation-1 leaf is unknown,
# which blocks remove-ca.
rotation_blocked "db1 has never seen hv1" "$work/rc-remove-ca-unknown.log" \
    'NOT done on 1 of 2 host(s): db1' 'unknown: hv1: never' 'api1: done' \
    -- -l db1,api1 -e rotation_phase=remove-ca -e rotation_ca="${gen1_sha:0:12}"
# rotation_allow_unknown accepts that (only to test the variable: the
# handshake below is the real way out).
rotation_done 2 "$work/rc-remove-ca-allow.log" -l db1,api1 -e rotation_phase=remove-ca -e rotation_ca_file="$gen1_ca" \
    -e rotation_allow_unknown=true
check "rotation_allow_unknown=true: db1's answer says it accepts hv1" \
    grep -q 'db1: done, accepting 1 host(s) not seen recently' "$work/rc-remove-ca-allow.log"
# hv1 runs no mtlsd here, so its (generation 2) certificate shakes hands with
# db1 as its mtlsd would; no need for rotation_allow_unknown.
hv1_handshake() {
    timeout 5 openssl s_client -connect "127.0.0.11:$((port_base + 13))" -servername db1.sf.test -alpn h2 \
        -cert "$work/pki/hosts/hv1/host.crt" -key "$work/pki/hosts/hv1/host.key" -CAfile "$gen2_ca" \
        </dev/null 2>/dev/null | grep -q 'Verify return code: 0 (ok)'
}
check "hv1's generation-2 certificate shakes hands with db1's database-grpc listener" hv1_handshake
rotation_done 2 "$work/rc-remove-ca.log" -l db1,api1 -e rotation_phase=remove-ca -e rotation_ca_file="$gen1_ca"
phase 3 2 '[2]'
final_bundle_ok() {
    local bundle="$work/hosts/api1/etc/mtlsd/tls/mesh-ca.pem"
    [ "$(grep -c 'BEGIN CERTIFICATE' "$bundle")" -eq 1 ] &&
        cmp -s <(openssl x509 -in "$bundle" -noout -fingerprint) \
            <(openssl x509 -in "$work/pki/ca-gen2/ca.crt" -noout -fingerprint)
}
check "phase 3: api1's bundle is generation 2 alone" final_bundle_ok

# --- 13. a host joins by fingerprint --------------------------------------------
step "hv1 joins by fingerprint: the bundle fetched from db1's bootstrap endpoint"
gen2_sha="$(openssl x509 -in "$gen2_ca" -outform DER | sha256sum | cut -d' ' -f1)"
hv1_etc="$work/hosts/hv1/etc/mtlsd"
join() {
    # join LOG SHA256: dev-ca.yml for hv1, its bundle fetched from db1.
    play "$1" -l hv1 -e "{\"pki_internal_ca_generation\": 2, \"pki_internal_ca_trusted_generations\": [2],
        \"mtlsd_trust_bootstrap_from\": \"$db1_bootstrap\", \"mtlsd_trust_sha256\": [\"$2\"]}"
}
joined_ok() {
    cmp -s "$hv1_etc/tls/mesh-ca.pem" "$work/hosts/db1/etc/mtlsd/tls/mesh-ca.pem" &&
        grep -qx "sha256 = \[\"$gen2_sha\"\]" "$hv1_etc/mtlsd.toml" &&
        "$work/hosts/hv1/usr/local/bin/mtlsd" check --config "$hv1_etc/mtlsd.toml" >"$work/check-join.log" 2>&1
}
if join "$work/join.log" "$gen2_sha" && joined_ok; then
    pass "hv1 with mtlsd_trust_bootstrap_from and the generation-2 SHA-256: the fetched bundle is db1's byte for byte, mtlsd.toml pins it, mtlsd check accepts it"
else
    fail "hv1 joining by fingerprint:"
    grep -E '^(fatal|FAILED)|msg' "$work/join.log" | sed 's/^/      /'
    sed 's/^/      /' "$work/check-join.log" 2>/dev/null || true
fi
if join "$work/join2.log" "$gen2_sha" && recap_changed_zero "$work/join2.log"; then
    pass "hv1 joining again with the same fingerprint: changed=0"
else
    fail "hv1 joining again is not changed=0:"
    grep -E '^(changed|fatal)' "$work/join2.log" | sed 's/^/      /'
fi
before="$(cat "$hv1_etc/mtlsd.toml" "$hv1_etc/tls/mesh-ca.pem" | sha256sum)"
if join "$work/join-wrong.log" "$gen1_sha"; then
    fail "a wrong fingerprint (generation 1's) did not fail the play"
elif grep -q 'refused the bundle of trust domain' "$work/join-wrong.log" &&
    grep -q "expected $gen1_sha (NOT received)" "$work/join-wrong.log" &&
    grep -q "received $gen2_sha .*(NOT expected)" "$work/join-wrong.log" &&
    [ "$before" = "$(cat "$hv1_etc/mtlsd.toml" "$hv1_etc/tls/mesh-ca.pem" | sha256sum)" ]; then
    pass "a wrong fingerprint fails the play naming the expected and the received SHA-256; hv1's live files untouched"
else
    fail "a wrong fingerprint: the play failed, but not with the mismatch, or hv1's live files changed:"
    grep -E 'fatal|refused|expected|received' "$work/join-wrong.log" | sed 's/^/      /'
fi
served="$(curl -s "http://$db1_admin/metrics" | sed -n 's/^mtlsd_bootstrap_requests_total{result="bundle"} //p')"
check "db1 counted the bundles it served (mtlsd_bootstrap_requests_total{result=\"bundle\"} = ${served:-none}, at least 3)" \
    test "${served:-0}" -ge 3
