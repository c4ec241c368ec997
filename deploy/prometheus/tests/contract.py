#!/usr/bin/env python3
"""Holds the alert rules and the dashboard to the metric naming contract.

Usage: contract.py OUTDIR

1. Every mtlsd_ metric the alert rules or the dashboard query must be a
   family (or histogram series) in tests/sample-metrics.txt, the sample of
   what the daemon exports. Exits 1 naming the ones that are not.
2. Writes OUTDIR/dashboard-queries.test.json, a `promtool test rules` file
   that loads the sample as input series and asserts that every dashboard
   query parses and returns at least one series. check.sh runs it.

Standard library only (the JSON output is valid YAML for promtool).
"""

import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.dirname(HERE)
SAMPLE = os.path.join(HERE, "sample-metrics.txt")
RULES = os.path.join(BASE, "mtlsd-alerts.yml")
DASHBOARD = os.path.join(BASE, "mtlsd-dashboard.json")

# Target labels Prometheus adds at scrape time; the rules rely on them.
TARGET_LABELS = 'job="mtlsd",instance="db1:9650"'

# A metric name that is not part of a recording rule name (level:name:ops).
NAME_RE = re.compile(r"(?<![:\w])(mtlsd_[a-z0-9_]+)")
SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$")


def parse_sample():
    """Returns (names, series): every series name in the sample and, per
    series, (name, labels text, value, is_counter_like)."""
    types = {}
    series = []
    with open(SAMPLE, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith("# TYPE "):
                _, _, name, typ = line.split(None, 3)
                types[name] = typ
                continue
            if line.startswith("#"):
                continue
            m = SAMPLE_RE.match(line)
            if not m:
                sys.exit(f"contract: cannot parse sample line: {line}")
            name, _, labels, value = m.groups()
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            typ = types.get(name) or types.get(family)
            series.append((name, labels or "", float(value), typ in ("counter", "histogram")))
    return {s[0] for s in series}, series


def dashboard_queries():
    with open(DASHBOARD, encoding="utf-8") as f:
        dash = json.load(f)
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["refId"], target["expr"]))
    return out


def grafana_to_promql(expr):
    return (expr.replace("$instance", ".*")
                .replace("$__rate_interval", "5m")
                .replace("$__interval", "1m"))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    outdir = sys.argv[1]
    names, series = parse_sample()

    with open(RULES, encoding="utf-8") as f:
        used = {(n, "mtlsd-alerts.yml") for n in NAME_RE.findall(f.read())}
    queries = dashboard_queries()
    for title, _, expr in queries:
        used |= {(n, f"dashboard panel '{title}'") for n in NAME_RE.findall(expr)}
    missing = sorted((n, where) for n, where in used if n not in names)
    if missing:
        for n, where in missing:
            print(f"contract: {where} uses {n}, which tests/sample-metrics.txt does not export",
                  file=sys.stderr)
        sys.exit(1)

    input_series = []
    for name, labels, value, counter_like in series:
        labels = f"{labels},{TARGET_LABELS}" if labels else TARGET_LABELS
        values = f"{value:g}+1x15" if counter_like else f"{value:g}x15"
        input_series.append({"series": f"{name}{{{labels}}}", "values": values})
    tests = []
    for title, ref, expr in queries:
        tests.append({
            "expr": f"count({grafana_to_promql(expr)}) > bool 0",
            "eval_time": "10m",
            "exp_samples": [{"labels": "{}", "value": 1}],
        })
    doc = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{
            "name": "every dashboard query returns data for the sample metrics",
            "interval": "1m",
            "input_series": input_series,
            "promql_expr_test": tests,
        }],
    }
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, "dashboard-queries.test.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    print(f"contract: {len(used)} metric uses match the sample; "
          f"{len(queries)} dashboard queries written to {path}")


if __name__ == "__main__":
    main()
