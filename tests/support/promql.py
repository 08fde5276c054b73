"""The PromQL that deploy/ asks of Prometheus: every dashboard target and alert expression, and the
series and labels each one reads."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import promql_parser
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
# Series Prometheus makes itself, and labels it attaches to every scraped series.
PROMETHEUS_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"}
TARGET_LABELS = {"job", "instance", "namespace", "pod"}
# Grafana expands these before a query reaches Prometheus.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
}


@dataclass
class Query:
    where: str  # "overview.json: Time to first token" or "rules: HyperLlamaNoReadyWorker"
    expr: str
    # metric name -> label names the query needs on it (matchers, and `by` labels of aggregations over it)
    labels: dict[str, set[str]] = field(default_factory=dict)


def grafana_expr_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    # Template variables ($model, ${pool}) stand for label values: any placeholder parses the same.
    return re.sub(r"\$\{?\w+\}?", "x", expr)


def dashboard_queries() -> list[Query]:
    queries = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                queries.append(
                    Query(f"{path.name}: {panel['title']}", grafana_expr_to_promql(target["expr"]))
                )
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                # label_values(metric{...}, label) is Grafana's, not PromQL: check it as a selector.
                m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
                assert m, f"{path.name}: variable {variable['name']} is not a label_values() query"
                query = Query(f"{path.name}: variable {variable['name']}", grafana_expr_to_promql(m[1]))
                query.labels.setdefault(_only_metric(query.expr), set()).add(m[2])
                queries.append(query)
    for q in queries:
        _analyse(q)
    return queries


def rule_queries() -> list[Query]:
    queries = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                queries.append(Query(f"{path.name}: {name}", rule["expr"]))
    for q in queries:
        _analyse(q)
    return queries


def _only_metric(expr: str) -> str:
    node = promql_parser.parse(expr)
    assert isinstance(node, promql_parser.VectorSelector), expr
    return str(node.name)


def _selectors(node: promql_parser.Expr) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(n: promql_parser.Expr) -> None:
        if isinstance(n, promql_parser.VectorSelector):
            found.append(n)

    promql_parser.walk(node, visit)
    return found


def _analyse(query: Query) -> None:
    """Fill ``query.labels``: every metric the expression selects and the labels it relies on."""
    tree = promql_parser.parse(query.expr)
    for selector in _selectors(tree):
        needed = query.labels.setdefault(str(selector.name), set())
        needed.update(m.name for m in selector.matchers.matchers if m.name != "__name__")

    def visit(n: promql_parser.Expr) -> None:
        if isinstance(n, promql_parser.AggregateExpr) and n.modifier is not None:
            if n.modifier.type == promql_parser.AggModifierType.By:
                for selector in _selectors(n.expr):
                    query.labels[str(selector.name)].update(n.modifier.labels)

    promql_parser.walk(tree, visit)
    for labels in query.labels.values():
        labels -= TARGET_LABELS


def histogram_base(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name
