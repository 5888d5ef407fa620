#!/usr/bin/env bash
# check_prometheus.sh SOURCE_DIR - the alerting rules and the Grafana
# dashboard of config/ (ctest -L packaging; issue 14):
#  1. `promtool check rules` accepts config/prometheus-alerts.yml;
#  2. `promtool test rules` runs tests/packaging/prometheus-alerts.test.yml:
#     each alert fires on the series that should trigger it, not before;
#  3. config/grafana-dashboard.json is JSON, every panel queries the
#     dashboard's data source variable, and every PromQL expression of it
#     parses: they are written out as recording rules, Grafana's variables
#     replaced by plain values, and given to `promtool check rules`.
# That every metric name both files use exists is checked against a live
# scrape by tests/integration/test_metrics.c. Exit 0 when all hold.
set -euo pipefail
SRC=${1:?usage: check_prometheus.sh SOURCE_DIR}
command -v promtool >/dev/null 2>&1 || {
    echo "check_prometheus: promtool not installed (Debian's prometheus package; scripts/deps.sh installs it)" >&2
    exit 1
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

promtool check rules "$SRC/config/prometheus-alerts.yml"
(cd "$SRC/tests/packaging" && promtool test rules prometheus-alerts.test.yml)

python3 - "$SRC/config/grafana-dashboard.json" "$tmp/dashboard-rules.yml" <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
problems, exprs = [], []
def walk(panels):
    for p in panels:
        if p.get("type") == "row":
            walk(p.get("panels", []))
            continue
        title = p.get("title", "?")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"panel {title!r} has no query")
        for t in targets:
            if (t.get("datasource") or p.get("datasource") or {}).get("uid") != "${datasource}":
                problems.append(f"panel {title!r}: a query not on the ${{datasource}} variable")
            e = t.get("expr", "")
            if not e:
                problems.append(f"panel {title!r}: a target without expr")
            exprs.append((title, e))
walk(dash.get("panels", []))
if {v["name"] for v in dash.get("templating", {}).get("list", [])} < {"datasource", "instance"}:
    problems.append("the dashboard lacks the datasource or instance variable")
with open(sys.argv[2], "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, (title, e) in enumerate(exprs):
        e = e.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$instance", ".*")
        if "$" in e:
            problems.append(f"panel {title!r}: unknown variable in {e}")
        f.write(f"      - record: dashboard:expr{i}\n        expr: {json.dumps(e)}\n")
for p in problems:
    print("check_prometheus:", p, file=sys.stderr)
print(f"check_prometheus: {len(exprs)} dashboard queries")
sys.exit(1 if problems else 0)
PY
promtool check rules "$tmp/dashboard-rules.yml"
echo "check_prometheus: rules valid and tested, dashboard queries valid"
