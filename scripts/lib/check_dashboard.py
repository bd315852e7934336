#!/usr/bin/env python3
"""Checks deploy/grafana/reelfleet-dashboard.json: every query parses as PromQL
(`promtool check rules` on a rule file made of them), every reelfleet metric a
query names is one the README documents (and so one the workers serve: a test
holds the README to /metrics), and the panels operators need are there.

Usage: check_dashboard.py PROMTOOL
"""

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

import report

ROOT = Path(__file__).resolve().parents[2]
failures = []
dash = json.loads((ROOT / "deploy/grafana/reelfleet-dashboard.json").read_text())
readme = (ROOT / "README.md").read_text()
section = readme.split("## Metrics", 1)[1].split("\n## ", 1)[0]
documented = set(re.findall(r"^\| `(reelfleet_[a-z_]+)`", section, re.M))
if not documented:
    failures.append("the README's metrics table is empty")

rules, ids = [], set()
for p in dash["panels"]:
    if p["id"] in ids:
        failures.append(f"duplicate panel id {p['id']}")
    ids.add(p["id"])
    for t in p["targets"]:
        expr = t["expr"]
        concrete = (
            expr.replace("$__rate_interval", "5m").replace("$__range", "6h").replace("$namespace", "reelfleet")
        )
        if "$" in concrete.replace('"$1"', ""):
            failures.append(f"{p['title']}: an unknown variable in {expr}")
        rules.append({"record": f"reelfleet:panel{p['id']}:{t['refId'].lower()}", "expr": concrete})
        for name in re.findall(r"\b(reelfleet_[a-z_]+)", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if base not in documented:
                failures.append(f"{p['title']}: {name} is not a documented metric")

titles = " | ".join(p["title"].lower() for p in dash["panels"])
for need in ("queue depth", "throughput", "failures", "p99", "cost per tier"):
    if need not in titles:
        failures.append(f"no panel about {need}")

with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
    yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
out = subprocess.run([sys.argv[1], "check", "rules", f.name], capture_output=True, text=True)
Path(f.name).unlink()
if out.returncode != 0:
    failures.append("promtool check rules:\n" + out.stdout + out.stderr)

report.finish("dashboard", failures, f"{len(dash['panels'])} panels, {len(rules)} queries parsed by promtool")
