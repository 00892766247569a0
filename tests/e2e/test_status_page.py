"""The tuneloop page in a real browser: headless Chromium (Selenium, chromium and its driver from apt) against a
real `airflow api-server`, on an installation in the demo's state: v1 bootstrapped, error cases ingested, and a
fine-tuning run (`airflow dags test finetune_weekly`) that trains and deploys v2.

While that run trains, the page shows it in progress with a progress bar read from the steps the trainer logs to
MLflow; once it has deployed, the page (opened from Airflow's navigation, in its iframe) shows production v2 and the
reason it moved, and the comparison of v1 and v2 draws its chart. A request without a session is refused: the page
sends to Airflow's login, its JSON answers 401. Screenshots are kept in ``$TUNELOOP_TEST_ARTIFACTS/status-page``
(default ``test-artifacts/`` in the repository).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import new_installation
from tests.e2e.scenario import REPO, Scenario, permissive_gate, write_cases

pytestmark = pytest.mark.slow

ARTIFACTS = Path(os.environ.get("TUNELOOP_TEST_ARTIFACTS", REPO / "test-artifacts")) / "status-page"
PASSWORD = "e2e-admin-password"
TRAINING_STEPS = 120  # long enough to be seen training (about 20 s here; 0.13-0.19 s a step); logged every 10


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def installation(tmp_path_factory, airflow_env, migrated_airflow_db, migrated_mlflow_db, damaged_model,
                 speech) -> Scenario:
    root = tmp_path_factory.mktemp("status_page")
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps({"admin": PASSWORD}))
    scenario = new_installation(root, airflow_env, migrated_airflow_db, migrated_mlflow_db,
                                AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin",
                                AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
                                AIRFLOW__API_AUTH__JWT_SECRET="tuneloop-e2e-page-" + "k" * 64,
                                TUNELOOP__TRAINING__MAX_STEPS=str(TRAINING_STEPS),
                                TUNELOOP__DEPLOYMENT__ROLLBACK_ON_ERROR_THRESHOLD="100")
    permissive_gate(scenario)
    scenario.tuneloop("bootstrap", str(damaged_model), "--reason", "the model in production before tuneloop")
    scenario.tuneloop("ingest", str(write_cases(root / "cases.jsonl", speech)))
    return scenario


@pytest.fixture(scope="module")
def api_server(installation: Scenario) -> Iterator[str]:
    """`airflow api-server` on a free loopback port for this installation; its base URL."""
    port = _free_port()
    log = (installation.root / "api-server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "airflow", "api-server", "--port", str(port)],
                              env=installation.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError):
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"api-server did not start:\n{(installation.root / 'api-server.log').read_text()[-4000:]}")
                time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(_which("chromedriver")), options=options)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def _which(program: str) -> str:
    import shutil

    found = shutil.which(program)
    if found is None:
        pytest.fail(f"{program} is not installed: `make setup` installs chromium and chromium-driver")
    return found


def _token(base: str) -> str:
    request = urllib.request.Request(f"{base}/auth/token", method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"username": "admin", "password": PASSWORD}).encode())
    return json.loads(urllib.request.urlopen(request, timeout=30).read())["access_token"]


def _status(base: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{base}/tuneloop/api/status", headers={"Authorization": f"Bearer {token}"})
    return json.loads(urllib.request.urlopen(request, timeout=30).read())["models"]["default"]


def _log_in(driver: Any, base: str) -> None:
    """Airflow's own login form, as a person fills it: the page sends there and back."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base}/tuneloop/")
    wait = WebDriverWait(driver, 60)
    wait.until(seen.presence_of_element_located((By.NAME, "username"))).send_keys("admin")
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(seen.url_to_be(f"{base}/tuneloop/"))


@pytest.fixture(scope="module")
def fine_tuned(installation: Scenario, api_server: str, browser: Any) -> dict[str, Any]:
    """The fine-tuning run, watched on the page while it trains; what the page showed then, once it finished."""
    from selenium.webdriver.common.by import By

    _log_in(browser, api_server)
    token = _token(api_server)
    log = (installation.root / "dags-test.log").open("w")
    run = subprocess.Popen([sys.executable, "-m", "airflow", "dags", "test", "finetune_weekly", "-c",
                            json.dumps({"reason": "e2e: the status page"})], env=installation.env, cwd=REPO,
                           stdout=log, stderr=subprocess.STDOUT)
    seen: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 900
        while run.poll() is None and time.monotonic() < deadline and "bar" not in seen:
            running = _status(api_server, token)["in_progress"]
            if running and running[0]["progress"]:
                browser.get(f"{api_server}/tuneloop/")
                bars = browser.find_elements(By.CSS_SELECTOR, "ul.in-progress progress")
                if bars:
                    seen |= {"json": running[0], "bar": (bars[0].get_attribute("value"), bars[0].get_attribute("max")),
                             "text": browser.find_element(By.CSS_SELECTOR, "ul.in-progress").text}
                    browser.save_screenshot(str(ARTIFACTS / "training-in-progress.png"))
            time.sleep(0.5)
        run.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if run.poll() is None:
            run.kill()
        log.close()
    assert run.returncode == 0, (installation.root / "dags-test.log").read_text()[-6000:]
    return seen


def test_requests_without_a_session_are_refused(api_server: str) -> None:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as page:
        opener.open(f"{api_server}/tuneloop/", timeout=30)
    assert page.value.code == 303 and "/auth/login?next=" in page.value.headers["Location"]
    for path in ("/tuneloop/api/status", "/tuneloop/api/compare?model=default&a=1&b=2"):
        with pytest.raises(urllib.error.HTTPError) as data:
            urllib.request.urlopen(f"{api_server}{path}", timeout=30)
        assert data.value.code == 401, path


def test_a_training_run_shows_its_progress(fine_tuned: dict[str, Any]) -> None:
    assert fine_tuned, "the page never showed the run training (see dags-test.log)"
    progress = fine_tuned["json"]["progress"]
    value, maximum = fine_tuned["bar"]
    assert maximum == str(TRAINING_STEPS) == str(progress["total"]) and 0 < int(value) <= TRAINING_STEPS
    assert f"/ {TRAINING_STEPS}" in fine_tuned["text"] and "train" in fine_tuned["text"]
    assert (ARTIFACTS / "training-in-progress.png").stat().st_size > 0


def test_the_page_in_airflows_navigation_shows_production_v2_and_why(fine_tuned: dict[str, Any], api_server: str,
                                                                      browser: Any, installation: Scenario) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    reason = json.loads(installation.tuneloop("status", "--json").stdout)["model"]["production_since"]["reason"]
    browser.get(f"{api_server}/")
    wait = WebDriverWait(browser, 60)
    wait.until(seen.element_to_be_clickable((By.CSS_SELECTOR, "a[href$='/plugin/tuneloop']"))).click()
    wait.until(seen.frame_to_be_available_and_switch_to_it((By.TAG_NAME, "iframe")))
    production = wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, "tr.version-production")))
    text = production.text
    browser.switch_to.default_content()
    browser.save_screenshot(str(ARTIFACTS / "page-in-airflow.png"))
    assert "v2" in text and "deploy" in text and reason.splitlines()[0][:60] in text


def test_the_comparison_of_v1_and_v2_draws_its_chart(fine_tuned: dict[str, Any], api_server: str,
                                                     browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(f"{api_server}/tuneloop/")
    form = browser.find_element(By.CSS_SELECTOR, "form.compare")
    Select(form.find_element(By.NAME, "a")).select_by_value("1")
    Select(form.find_element(By.NAME, "b")).select_by_value("2")
    form.find_element(By.TAG_NAME, "button").click()
    chart = WebDriverWait(browser, 60).until(seen.visibility_of_element_located((By.CSS_SELECTOR,
                                                                                "svg.metrics-chart")))
    bars = chart.find_elements(By.TAG_NAME, "rect")
    browser.save_screenshot(str(ARTIFACTS / "compare-v1-v2.png"))
    assert chart.is_displayed() and len(bars) == 4  # WER and CER, one bar per version
    rows = {row.find_elements(By.TAG_NAME, "td")[0].text: row.text
            for row in browser.find_elements(By.CSS_SELECTOR, "table.comparison tr")[1:]}
    assert set(rows) == {"wer", "cer"}
    assert "Churn from v1 to v2" in browser.page_source


def test_the_last_decision_opens_to_its_record(fine_tuned: dict[str, Any], api_server: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{api_server}/tuneloop/")
    decision = browser.find_element(By.CSS_SELECTOR, "details.decision")
    decision.find_element(By.TAG_NAME, "summary").click()
    assert "deployed" in decision.text and "WER" in decision.text  # its summary lines and scoreboard
    links = {a.text: a.get_attribute("href") for a in decision.find_elements(By.TAG_NAME, "a")}
    assert {"Airflow run", "MLflow run", "whole decision record"} <= set(links)
    assert "/dags/finetune_weekly/runs/manual__" in links["Airflow run"]
    browser.get(links["whole decision record"])
    record = WebDriverWait(browser, 60).until(seen.visibility_of_element_located((By.CSS_SELECTOR, "pre.record")))
    assert '"status": "deployed"' in record.text and '"candidate_version": "2"' in record.text
