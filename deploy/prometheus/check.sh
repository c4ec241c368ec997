#!/usr/bin/env bash
# Checks everything in deploy/prometheus/ with real Prometheus tooling:
#   - the sample /metrics exposition passes `promtool check metrics`,
#   - the alert rules pass `promtool check rules` and their unit tests pass
#     `promtool test rules`,
#   - the dashboard is valid JSON,
#   - the rules and the dashboard only use metric names the sample exports,
#     and every dashboard query returns data for the sample.
# Installs promtool first if needed (scripts/install-promtool, needs root
# then). Runs every check, then exits 1 if any failed.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

"$repo/scripts/install-promtool"
# install-promtool puts it there; make sure this shell finds it.
export PATH="$PATH:/usr/local/bin"

if ! command -v python3 >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        "$repo/scripts/apt-quiet" update
        "$repo/scripts/apt-quiet" install python3
    else
        echo "error: python3 is missing; install the Debian package 'python3'" >&2
        exit 1
    fi
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

failed=()
check() {
    # check NAME COMMAND...: runs COMMAND, records NAME if it fails.
    local name="$1"
    shift
    printf '\n==> %s\n' "$name"
    if "$@"; then
        return 0
    fi
    echo "FAILED: $name" >&2
    failed+=("$name")
}

check_sample_metrics() {
    promtool check metrics <"$here/tests/sample-metrics.txt" && echo "no problems"
}

check_dashboard_json() {
    python3 -m json.tool "$here/mtlsd-dashboard.json" >/dev/null && echo "valid JSON"
}

check_contract() {
    python3 "$here/tests/contract.py" "$tmp" &&
        promtool test rules "$tmp/dashboard-queries.test.json"
}

cd "$here"
check "promtool check metrics tests/sample-metrics.txt" check_sample_metrics
check "promtool check rules mtlsd-alerts.yml" promtool check rules mtlsd-alerts.yml
check "promtool test rules tests/mtlsd-alerts.test.yml" promtool test rules tests/mtlsd-alerts.test.yml
check "dashboard JSON" check_dashboard_json
check "metric names and dashboard queries against the sample" check_contract

echo
if [ "${#failed[@]}" -ne 0 ]; then
    echo "deploy/prometheus: ${#failed[@]} check(s) failed:" >&2
    printf '  %s\n' "${failed[@]}" >&2
    exit 1
fi
echo "deploy/prometheus: all checks passed"
