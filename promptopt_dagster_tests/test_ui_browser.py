"""The Dagster UI in a real browser: Playwright drives Debian's chromium against a real `dagster dev`.

An optimization of the toy dataset runs through the CLI (task model: the openai SDK against a fake
server), then the test opens the asset pages a person would: final_report must show the Prompt
Optimization Summary and its plot, comparison_report the prompt diff. Screenshots are saved under
test-artifacts/ui/ (PROMPTOPT_TEST_ARTIFACTS overrides), for a person to look at after CI.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from promptopt_dagster.app.settings import PROJECT_ROOT
from promptopt_dagster.defs.webserver_client import asset_partition_url
from promptopt_dagster_tests.dagster_dev_helpers import free_port, start_ui, stop_ui, wait_for_webserver
from promptopt_dagster_tests.fake_llm_servers import FakeLLMServer
from promptopt_dagster_tests.remote_helpers import run_cli
from promptopt_dagster_tests.test_gepa_end_to_end import reflect, task, toy_project

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("PROMPTOPT_TEST_ARTIFACTS") or PROJECT_ROOT / "test-artifacts") / "ui"


def _browser_or_skip():
    """CI installs both (.ci/run); elsewhere a missing browser skips, in CI it fails."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or CHROMIUM is None:
        message = "needs Playwright (pip install -e '.[dev]') and chromium (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return sync_playwright


def _open(page, url: str, wait_for: str, shot: Path) -> str:
    page.goto(url)
    skip = page.get_by_role("button", name="Skip")  # Dagster's first-visit "join the community" dialog
    try:
        skip.click(timeout=5000)
    except Exception:
        pass
    page.get_by_text(wait_for).first.wait_for(timeout=60000)
    page.screenshot(path=str(shot), full_page=True)
    return page.inner_text("body")


@pytest.mark.slow
def test_the_asset_pages_show_the_summary_and_the_prompt_diff(tmp_path):
    sync_playwright = _browser_or_skip()
    root = toy_project(tmp_path / "project")
    entries = yaml.safe_load((root / "data" / "optimizations.yaml").read_text())
    entries["optimizations"]["toy_gepa"]["stop"]["max_iterations"] = 1  # one iteration: GEPA's rewrite, accepted
    (root / "data" / "optimizations.yaml").write_text(yaml.safe_dump(entries))
    dirs = {"PROMPTOPT_DATA_DIR": str(root / "data"), "PROMPTOPT_PROMPTS_DIR": str(root / "prompts")}
    with FakeLLMServer("openai", answer=task) as srv, FakeLLMServer("openai", answer=reflect) as reflection:
        done = run_cli(
            root / "state",
            {
                **dirs,
                "PROMPTOPT_TASK__BACKEND": "openai",
                "PROMPTOPT_TASK__BASE_URL": srv.openai_base_url,
                "OPENAI_API_KEY": "sk-ui",
                "PROMPTOPT_OPTIMIZER__BACKEND": "openai",
                "PROMPTOPT_OPTIMIZER__BASE_URL": reflection.openai_base_url,
            },
            "--optimization",
            "toy_gepa",
            cwd=root,
        )
    assert done.returncode == 0, done.stderr[-3000:]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc, _ = start_ui(root / "state", port, tmp_path / "dagster_dev.log", extra_env=dirs)
    try:
        wait_for_webserver(port, proc, tmp_path / "dagster_dev.log")
        base = f"http://127.0.0.1:{port}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                # the partition's own page (the overview shows the newest materialization of any partition)
                _open(
                    page,
                    asset_partition_url("final_report", "toy_gepa", base),
                    "score_per_iteration",
                    ARTIFACTS / "final_report.png",
                )
                # the summary is over the 1,000 characters the UI shows inline: it opens in a dialog
                page.locator("tr", has_text="summary").get_by_text("[Show Markdown]").first.click()
                page.get_by_text("Prompt Optimization Summary").first.wait_for(timeout=30000)
                page.wait_for_timeout(1000)  # the dialog fades in
                page.screenshot(path=str(ARTIFACTS / "summary.png"))
                summary = page.inner_text("body")
                page.get_by_role("button", name="Close").click()
                assert "Prompt Optimization Summary: toy_gepa (generation 1)" in summary and "✓ accepted" in summary
                assert "Held-out test" in summary and "Stopped:" in summary and "Best prompt" in summary
                # the plot is large markdown, so the UI shows it in a dialog behind [Show Markdown]
                page.locator("tr", has_text="score_per_iteration").get_by_text("[Show Markdown]").click()
                plot = page.locator("img[alt='score per iteration']")
                plot.wait_for(timeout=30000)
                assert plot.evaluate("img => img.naturalWidth") > 100  # the PNG decoded, not a broken image
                page.wait_for_timeout(1000)  # the dialog fades in
                page.screenshot(path=str(ARTIFACTS / "score_per_iteration.png"))
                page.get_by_role("button", name="Close").click()
                diff = _open(
                    page, f"{base}/assets/comparison_report", "Prompt diff", ARTIFACTS / "comparison_report.png"
                )
                assert "Iteration 0: accepted" in diff
                assert "+Classify the review. When unsure, answer negative." in diff  # the diff's added line
            finally:
                browser.close()
    finally:
        stop_ui(proc)
    assert (ARTIFACTS / "final_report.png").stat().st_size > 10_000
    assert (ARTIFACTS / "comparison_report.png").stat().st_size > 10_000
