"""The /ui page and the reports in a real browser: Debian's chromium, headless, driven by
selenium, against the real stack (uvicorn, Redis, an RQ worker).

Set ``NACS_SCREENSHOTS`` to a folder (``NACS_SCREENSHOTS=docs/img``) to keep the page's and a
report's screenshots there: the README shows them.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.stack import REPO, TENANT_KEYS, Stack, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not CHROMIUM.exists() or not Path(CHROMEDRIVER).exists():
    pytest.skip(
        f"no browser: {CHROMIUM} or chromedriver is missing "
        "(apt-get install -y chromium chromium-driver; .ci/run installs them)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.common.by import By  # noqa: E402

WINDOW = (1360, 1000)


def _driver(javascript: bool = True, height: int = WINDOW[1]) -> Any:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
        f"--window-size={WINDOW[0]},{height}", "--hide-scrollbars", "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    return webdriver.Chrome(options=options, service=service)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = _driver()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def finished_job(stack: Stack, small_parquet: Path) -> dict[str, Any]:
    """A nacs job of tenant alpha that succeeded: its report has every section."""
    body = {
        "dataset_uri": str(small_parquet), "size": 300, "method": "nacs",
        "options": {"device": "cpu"},
    }
    job = stack.submit(body)
    final = stack.wait(job["id"], timeout_s=240)
    assert final["status"] == "succeeded", final
    return final


def _screenshot(png: bytes, name: str) -> None:
    folder = os.environ.get("NACS_SCREENSHOTS")
    if folder:
        target = REPO / folder if not os.path.isabs(folder) else Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(png)


def _drawn(png: bytes) -> bytes | None:
    """``png`` when the picture holds drawing (many colours, and a fair share of it not
    background), else None."""
    from matplotlib.image import imread

    pixels = imread(io.BytesIO(png), format="png")[..., :3]  # (H, W, 3) in [0, 1]
    inked = np.any(np.abs(pixels - pixels[0, 0]) > 0.05, axis=-1).mean()
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0).shape[0]
    return png if inked > 0.01 and colours > 50 else None


def _open_page(browser: Any, stack: Stack, tenant: str) -> None:
    browser.get(f"{stack.url}/ui")
    wait_until(lambda: browser.find_element(By.ID, "app").is_displayed(), 10, what="the page")
    browser.find_element(By.ID, "forget-key").click()
    field = browser.find_element(By.ID, "api-key")
    field.send_keys(TENANT_KEYS[tenant])
    browser.find_element(By.ID, "use-key").click()


def _row(browser: Any, job_id: str) -> Any:
    found = browser.find_elements(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]')
    return found[0] if found else None


def _status(browser: Any, job_id: str) -> str | None:
    row = _row(browser, job_id)
    return row.get_attribute("data-status") if row is not None else None


def test_the_page_lists_the_tenants_jobs_and_shows_a_report(
    browser: Any, stack: Stack, finished_job: dict[str, Any]
) -> None:
    job_id = finished_job["id"]
    _open_page(browser, stack, "alpha")
    wait_until(lambda: _status(browser, job_id) == "succeeded", 20, what="the job listed")
    row = _row(browser, job_id)
    assert "nacs" in row.text and "300 rows" in row.text
    key = TENANT_KEYS["alpha"]
    assert key not in browser.current_url and browser.get_cookies() == []
    assert browser.execute_script("return sessionStorage.getItem('nacs.apiKey')") == key
    assert browser.find_element(By.ID, "api-key").get_attribute("value") == ""

    row.find_element(By.CSS_SELECTOR, "button.report").click()
    frame = wait_until(
        lambda: browser.find_elements(By.ID, "report-frame"), 20, what="the report shown"
    )[0]
    browser.switch_to.frame(frame)
    try:
        wait_until(
            lambda: len(browser.find_elements(By.CSS_SELECTOR, "figure svg")) >= 4, 20,
            what="the report's plots",
        )
        heading = browser.find_element(By.TAG_NAME, "h1").text
        assert job_id in heading
        plots = browser.find_elements(By.CSS_SELECTOR, "figure svg")
        assert all(plot.size["height"] > 100 and plot.size["width"] > 300 for plot in plots)
        sections = {s.get_attribute("id") for s in browser.find_elements(By.TAG_NAME, "section")}
        assert {"data", "noise", "labels", "weights", "time", "audit", "request"} <= sections
    finally:
        browser.switch_to.default_content()
    # The frame paints after its document loads.
    wait_until(lambda: _drawn(frame.screenshot_as_png), 20, 0.5, "the report painted")


def test_progress_moves_and_cancel_works_from_the_page(
    browser: Any, stack: Stack, small_parquet: Path, finished_job: dict[str, Any]
) -> None:
    options = {"rounds": 20, "mc_passes": 100, "epochs_per_round": 20, "device": "cpu"}
    job = stack.submit(
        {"dataset_uri": str(small_parquet), "size": 1000, "method": "nacs-paper",
         "options": options}
    )
    _open_page(browser, stack, "alpha")
    seen: list[float] = []

    def moved() -> bool:
        row = _row(browser, job["id"])
        if row is None or row.get_attribute("data-status") != "running":
            return False
        value = float(row.find_element(By.TAG_NAME, "progress").get_property("value"))
        if not seen or value != seen[-1]:
            seen.append(value)
        return len(seen) >= 3

    wait_until(moved, 180, interval_s=0.2, what="the progress bar moving")
    assert seen == sorted(seen) and seen[-1] > seen[0], seen
    if browser.find_element(By.ID, "report").is_displayed():
        browser.find_element(By.ID, "close-report").click()
    _screenshot(browser.get_screenshot_as_png(), "jobs-page.png")
    assert _status(browser, finished_job["id"]) == "succeeded"

    _row(browser, job["id"]).find_element(By.CSS_SELECTOR, "button.cancel").click()
    wait_until(lambda: _status(browser, job["id"]) == "cancelled", 60, what="the job cancelled")
    assert stack.job(job["id"])["status"] == "cancelled"


def test_another_tenants_key_sees_none_of_it(
    browser: Any, stack: Stack, finished_job: dict[str, Any]
) -> None:
    with stack.client() as client:
        alpha_jobs = {job["id"] for job in client.get("/jobs?limit=100").json()["jobs"]}
    _open_page(browser, stack, "beta")
    message = browser.find_element(By.ID, "message")
    wait_until(
        lambda: "job" in message.text and "Loading" not in message.text, 20,
        what="beta's jobs listed",
    )
    time.sleep(0.5)
    listed = {r.get_attribute("data-job") for r in browser.find_elements(By.CSS_SELECTOR, "tr")}
    assert not listed & alpha_jobs
    fetched = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {headers: {Authorization: 'Bearer ' + arguments[1]}})"
        ".then(r => r.json().then(b => done([r.status, b.error.code])));",
        f"/jobs/{finished_job['id']}/report", TENANT_KEYS["beta"],
    )
    assert fetched == [404, "job_not_found"]
    browser.find_element(By.ID, "forget-key").click()
    assert browser.execute_script("return sessionStorage.getItem('nacs.apiKey')") is None


def test_a_service_without_keys_lists_its_jobs_without_asking_for_one(
    browser: Any, tmp_path: Path, small_parquet: Path
) -> None:
    from tests.stack import start_stack

    keyless = start_stack(
        tmp_path / "keyless", api_keys={}, allowed_uris=f"file://{small_parquet.parent}/"
    )
    try:
        job = keyless.submit({"dataset_uri": str(small_parquet), "size": 50, "method": "random"})
        browser.execute_script("sessionStorage.clear()")
        browser.get(f"{keyless.url}/ui")
        wait_until(lambda: _status(browser, job["id"]) is not None, 20, what="the job listed")
        assert "Paste an API key" not in browser.find_element(By.ID, "message").text
    finally:
        keyless.stop()


def test_without_javascript_the_page_says_so_and_a_report_still_reads(
    stack: Stack, finished_job: dict[str, Any]
) -> None:
    driver = _driver(javascript=False, height=2300)
    try:
        driver.get(f"{stack.url}/ui")
        assert "needs JavaScript" in driver.find_element(By.TAG_NAME, "body").text
        assert not driver.find_element(By.ID, "app").is_displayed()
        output = Path(finished_job["result"]["output_uri"][len("file://") :])
        driver.get((output / "report.html").as_uri())
        assert finished_job["id"] in driver.find_element(By.TAG_NAME, "h1").text
        plots = driver.find_elements(By.CSS_SELECTOR, "figure svg")
        assert len(plots) >= 4 and all(plot.size["height"] > 100 for plot in plots)
        png = wait_until(lambda: _drawn(driver.get_screenshot_as_png()), 20, 0.5, "the plots")
        _screenshot(png, "report.png")
    finally:
        driver.quit()
