"""The Grafana dashboards' PromQL, reduced to the metric names each query reads, so that tests
can hold them against the names the code exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARDS = Path(__file__).parent.parent / "helm" / "ganforge" / "dashboards"
# PromQL words that look like metric names where they stand: aggregation and binary-operator
# keywords (functions are recognised by their opening parenthesis).
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
KEYWORDS |= {"unless", "offset", "inf", "nan"}
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: every identifier that is not a function call,
    a keyword, a label (in `{...}` or a `by (...)` list), a string or a range."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings first: they may hold braces
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    names = set()
    for m in _NAME.finditer(s):
        if s[m.end() :].lstrip().startswith("(") or m.group().lower() in KEYWORDS:
            continue
        if m.start() > 0 and s[m.start() - 1] in "$.0123456789":  # a variable, a number
            continue
        names.add(m.group())
    return names


def dashboard_queries(path: Path) -> dict[str, set[str]]:
    """{panel title or variable: metric names} of one dashboard file; `label_values(m, label)`
    of a template variable reads the metric `m`."""
    dash = json.loads(path.read_text())
    out: dict[str, set[str]] = {}
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            out[f"{panel['title']} [{t['refId']}]"] = metric_names(t["expr"])
    for var in dash.get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else ""
        if text:
            out[f"${var['name']}"] = set(re.findall(r"label_values\(\s*([a-zA-Z_:][\w:]*)", text))
    return out
