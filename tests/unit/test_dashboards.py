"""The Grafana dashboards load as provisioned and every query in them and in the alert rules is PromQL."""

from __future__ import annotations

import json
from pathlib import Path

import promql_parser
import pytest
import yaml
from support.promql import DASHBOARDS, dashboard_queries, rule_queries

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in DASHBOARDS}


def test_the_three_dashboards_exist_with_unique_uids(dashboards: dict[str, dict]):
    assert set(dashboards) == {"overview.json", "workers.json", "model.json"}
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids)


def test_panels_query_through_the_datasource_variable_and_do_not_overlap(dashboards: dict[str, dict]):
    for name, dashboard in dashboards.items():
        assert dashboard["templating"]["list"][0]["type"] == "datasource"
        taken: set[tuple[int, int]] = set()
        for panel in dashboard["panels"]:
            pos = panel["gridPos"]
            cells = {
                (x, y)
                for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])
            }
            assert pos["x"] + pos["w"] <= 24, f"{name}: {panel['title']} is wider than the grid"
            assert not cells & taken, f"{name}: {panel['title']} overlaps another panel"
            taken |= cells
            if panel["type"] == "row":
                continue
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", f"{name}: {panel['title']}"


def test_the_model_dashboard_has_a_model_variable(dashboards: dict[str, dict]):
    variables = {v["name"]: v for v in dashboards["model.json"]["templating"]["list"]}
    assert not variables["model"]["multi"]
    exprs = [t["expr"] for p in dashboards["model.json"]["panels"] for t in p.get("targets", [])]
    assert all('model="$model"' in e for e in exprs)


def test_every_query_is_valid_promql():
    queries = dashboard_queries() + rule_queries()
    for q in queries:
        promql_parser.parse(q.expr)  # raises with the position of the error
        assert q.labels, f"{q.where} reads no series"


def test_provisioning_points_at_the_mounted_dashboards():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    mounts = dict(
        v.rsplit(":", 1)[0].split(":", 1)
        for v in compose["services"]["grafana"]["volumes"]
        if v.startswith("./")
    )
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "hyperllama.yml").read_text())[
        "providers"
    ]
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    (datasource,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
