"""A person's path through the real stack in headless Chromium.

Log in on Airflow's login page, trigger ``wfo_pipeline`` through its params form with a small
configuration, wait for the run to succeed, open the Quant Engine page and find that run's report
(PBO, deflated Sharpe, the equity curves page) and the bridge's health. Screenshots land in ``tests/e2e/artifacts/``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest

pytestmark = [pytest.mark.airflow, pytest.mark.e2e]

TICKERS = "SYN00,SYN01,SYN02"
START, END = "2020-01-01", "2021-12-31"
#: Typed into the form like a person would; the date pickers take their value through SET_VALUE_JS.
TYPED = {"element_tickers": TICKERS, "element_n_groups": "4", "element_n_test_groups": "2"}
DATES = {"element_start": START, "element_end": END}
TRIALS = [{"max_depth": 2, "n_estimators": 10}, {"max_depth": 3, "n_estimators": 10}]
RUN_TIMEOUT_S = 300
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
QUANT_ENGINE = str(Path(sys.executable).with_name("quant-engine"))

#: Sets a React-controlled input's value and fires the events the form listens to (for date inputs,
#: whose typed format depends on the browser's locale).
SET_VALUE_JS = """
const [element, value] = arguments;
const proto = element.tagName === 'TEXTAREA' ? HTMLTextAreaElement.prototype : HTMLInputElement.prototype;
Object.getOwnPropertyDescriptor(proto, 'value').set.call(element, value);
element.dispatchEvent(new Event('input', {bubbles: true}));
element.dispatchEvent(new Event('change', {bubbles: true}));
element.dispatchEvent(new Event('blur', {bubbles: true}));
"""


def _shot(driver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _wait_for(condition, timeout_s: float, what: str, interval_s: float = 1.0):
    """``condition()``'s first truthy value; a slow or refused HTTP answer counts as not yet."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (TimeoutError, urllib.error.URLError):
            value = None
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _ingest(stack) -> None:
    result = subprocess.run(
        [QUANT_ENGINE, "ingest", "--start", START, "--end", END, "--tickers", TICKERS],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def _log_in(driver, stack) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{stack.url}/")
    _wait_for(lambda: driver.find_elements(By.NAME, "username"), 60, "the login page")
    _shot(driver, "01-login")
    driver.find_element(By.NAME, "username").send_keys(stack.user)
    driver.find_element(By.NAME, "password").send_keys(stack.password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _wait_for(lambda: "/auth/login" not in driver.current_url, 30, "the login to go through")


def _trigger_with_params(driver, stack) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(f"{stack.url}/dags/wfo_pipeline")
    trigger = _wait_for(
        lambda: driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Trigger Dag']"),
        60,
        "the DAG page's Trigger button",
    )
    trigger[0].click()
    _wait_for(lambda: driver.find_elements(By.ID, "element_tickers"), 30, "the trigger form")
    for name, value in DATES.items():
        driver.execute_script(SET_VALUE_JS, driver.find_element(By.CSS_SELECTOR, f"input[name='{name}']"), value)
    for name, value in {**TYPED, "element_trials": json.dumps(TRIALS)}.items():
        field = driver.find_element(By.NAME, name)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", field)
        field.click()
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.DELETE)
        field.send_keys(value)
        field.send_keys(Keys.TAB)
    _shot(driver, "02-trigger-form")
    dialog = driver.find_element(By.CSS_SELECTOR, "[role=dialog][id^='dialog:']")  # not the date popover
    submit = [
        b
        for b in dialog.find_elements(By.TAG_NAME, "button")
        if (b.get_attribute("textContent") or "").strip() == "Trigger"
    ]
    assert submit, "no Trigger button in the form"
    driver.execute_script("arguments[0].scrollIntoView();", submit[-1])
    submit[-1].click()


def test_trigger_wfo_from_the_form_and_read_its_report_in_the_quant_engine_page(stack, browser) -> None:
    from selenium.webdriver.common.by import By

    from quant_engine.runs import safe_name

    _ingest(stack)
    _log_in(browser, stack)
    token = stack.api_token()
    runs = "/api/v2/dags/wfo_pipeline/dagRuns"
    before = {r["dag_run_id"] for r in stack.api("GET", runs, token)["dag_runs"]}  # a reused database's runs
    _trigger_with_params(browser, stack)

    (run,) = _wait_for(
        lambda: [r for r in stack.api("GET", runs, token)["dag_runs"] if r["dag_run_id"] not in before],
        60,
        "the triggered run to appear",
    )
    assert run["conf"]["tickers"] == TICKERS and run["conf"]["start"] == START and run["conf"]["end"] == END
    assert run["conf"]["n_groups"] == 4 and run["conf"]["trials"] == TRIALS
    run_path = f"/api/v2/dags/wfo_pipeline/dagRuns/{run['dag_run_id']}"
    state = _wait_for(
        lambda: (s := stack.api("GET", run_path, token)["state"]) in ("success", "failed") and s,
        RUN_TIMEOUT_S,
        "the wfo_pipeline run to finish",
        interval_s=3.0,
    )
    browser.get(f"{stack.url}/dags/wfo_pipeline/runs/{run['dag_run_id']}")
    time.sleep(2)
    _shot(browser, "03-run-finished")
    assert state == "success", f"wfo_pipeline run {run['dag_run_id']} ended {state}; see the artifacts"

    folder = safe_name(run["dag_run_id"])
    report = json.loads((Path(stack.qe_home) / "reports" / "wfo" / folder / "report.json").read_text())
    browser.get(f"{stack.url}/plugin/quant-engine")  # the UI's navigation entry: the plugin in an iframe
    frame = _wait_for(lambda: browser.find_elements(By.TAG_NAME, "iframe"), 60, "the Quant Engine view")
    browser.switch_to.frame(frame[0])
    _wait_for(
        lambda: report["run_id"] in browser.find_element(By.TAG_NAME, "body").text,
        60,
        "the run's row on the Quant Engine page",
    )
    browser.switch_to.default_content()
    _shot(browser, "04-quant-engine")
    browser.switch_to.frame(browser.find_element(By.TAG_NAME, "iframe"))
    page = browser.find_element(By.TAG_NAME, "body").text
    assert f"{report['pbo']:.3f}" in page and f"{report['deflated_sharpe']:.3f}" in page
    assert "bridge not reachable" not in page and "waiting_for_model" in page  # the bridge's health, no champion yet
    browser.find_element(By.LINK_TEXT, report["run_id"]).click()
    _wait_for(
        lambda: "Probability of backtest overfitting" in browser.find_element(By.TAG_NAME, "body").text,
        60,
        "the run's report page",
    )
    assert browser.find_elements(By.TAG_NAME, "img"), "the report page shows no plots (equity curves)"
    browser.switch_to.default_content()
    _shot(browser, "05-wfo-report")
