"""The Prometheus configs and alert rules under deploy/prometheus pass promtool's checks and unit tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool from the venv (`make test` extracts it from Debian's prometheus package), else from PATH."""
    venv = Path(sys.executable).parent / "promtool"
    found = str(venv) if venv.exists() else shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: `make test` should have extracted it from Debian's prometheus")
        pytest.skip("promtool not installed (it comes from Debian's prometheus package)")
    return found


def run(*argv: str, cwd: Path = PROMETHEUS) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(argv)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_rules_pass_promtool_check(promtool: str):
    out = run(promtool, "check", "rules", *sorted(str(p) for p in (PROMETHEUS / "rules").glob("*.yml")))
    assert "SUCCESS" in out


def test_alert_rule_unit_tests_pass(promtool: str):
    run(promtool, "test", "rules", *sorted(str(p) for p in (PROMETHEUS / "tests").glob("*.yml")))


@pytest.mark.parametrize("name", ["prometheus.local.yml", "prometheus.compose.yml"])
def test_config_passes_promtool_check(promtool: str, name: str):
    out = run(promtool, "check", "config", name)
    assert "1 rule files found" in out


def test_kubernetes_config_passes_promtool_check(promtool: str, tmp_path: Path):
    """Debian's promtool is built without Kubernetes discovery, so its one kubernetes_sd block is swapped
    for a static target; the relabelling, the job and the rule files are still checked."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.k8s.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    job["static_configs"] = [{"targets": ["pod:9102"]}]
    config["rule_files"] = [str(PROMETHEUS / f) for f in config["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)
    assert "1 rule files found" in out


def test_every_config_scrapes_the_jobs_the_rules_name():
    """The rules and dashboards rely on these job names, whichever way Prometheus runs."""
    for name in ("prometheus.local.yml", "prometheus.compose.yml"):
        jobs = {j["job_name"] for j in yaml.safe_load((PROMETHEUS / name).read_text())["scrape_configs"]}
        assert jobs == {
            "hyperllama-gateway",
            "hyperllama-scheduler",
            "hyperllama-worker",
            "hyperllama-store",
        }, name
    (k8s,) = yaml.safe_load((PROMETHEUS / "prometheus.k8s.yml").read_text())["scrape_configs"]
    job_relabel = [r for r in k8s["relabel_configs"] if r.get("target_label") == "job"]
    assert job_relabel and job_relabel[0]["replacement"] == "hyperllama-$1"
