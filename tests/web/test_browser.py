"""The dashboard in headless Chromium (Debian ``chromium`` + ``chromium-driver``, driven by Selenium; nothing is
downloaded): log in, the studies list, a study, resend and re-run by clicking, the failures page.

Screenshots (PNG) of the login, studies, study and failures pages are kept in ``test-artifacts/screenshots/`` at
the repository root, or ``$AINODE_TEST_ARTIFACTS/screenshots/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.jobs.recovery import queued_job_ids
from node.ledger import deliveries as store
from node.ledger.states import DeliveryState
from tests.web.conftest import DONE_UID, FAILED_UID, RECEIVING_UID, TOKEN, WebNode

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[2]

if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip(f"headless Chromium tests need {CHROMIUM} and {CHROMEDRIVER} (Debian chromium, chromium-driver)",
                allow_module_level=True)

os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never download a driver

from selenium import webdriver  # noqa: E402  (after the skip and SE_OFFLINE)
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,900", "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def screenshots() -> Path:
    base = os.environ.get("AINODE_TEST_ARTIFACTS")
    folder = (Path(base) if base else ROOT / "test-artifacts") / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shoot(driver: WebDriver, folder: Path, name: str) -> Path:
    """A full-page PNG: the window is made as tall as the page first."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1400, max(600, min(height + 20, 4000)))
    path = folder / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"screenshot {path} failed"
    driver.set_window_size(1400, 900)
    assert path.stat().st_size > 5000  # a rendered page, not an empty image
    return path


def click_through(driver: WebDriver, by: str, value: str) -> None:
    """Click something that loads a new page and wait until it has replaced the old one: click() may return
    before a form's POST is answered, and the assertions that follow must see the new page (or its ledger rows)."""
    old_page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(by, value).click()
    WebDriverWait(driver, 15).until(lambda _driver: _replaced(old_page))


#: what chromium answers, instead of a stale element, when asked about a node of a document it is just replacing
_OLD_DOCUMENT = ("does not belong to the document", "No node with given id")


def _replaced(old_page: WebElement) -> bool:
    """Selenium's ``staleness_of``, plus chromium's answer for a node of the document being navigated away from
    (a CI run once failed on it: "unhandled inspector error: Node with given id does not belong to the document")."""
    try:
        old_page.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if any(text in str(exc) for text in _OLD_DOCUMENT):
            return True
        raise
    return False


def log_in(driver: WebDriver, web: WebNode, token: str) -> None:
    driver.find_element(By.ID, "token").send_keys(token)
    click_through(driver, By.ID, "login-button")


def open_dashboard(driver: WebDriver, web: WebNode) -> None:
    driver.delete_all_cookies()  # cookies ignore the port: a session of an earlier test's server must not count
    driver.get(f"{web.base_url}/studies")
    assert driver.current_url.startswith(f"{web.base_url}/login?next=/studies")
    log_in(driver, web, TOKEN)
    assert driver.current_url == f"{web.base_url}/studies"


def test_pages_and_screenshots(web: WebNode, browser: WebDriver, screenshots: Path) -> None:
    browser.delete_all_cookies()
    browser.get(f"{web.base_url}/studies")
    assert "Log in" in browser.title
    shoot(browser, screenshots, "login")
    log_in(browser, web, "wrong-token-wrong-token")
    assert "Wrong token" in browser.find_element(By.ID, "error").text
    assert [e for e, _, _ in web.events()] == ["web-login-failed"]

    log_in(browser, web, TOKEN)
    assert browser.current_url == f"{web.base_url}/studies"
    rows = browser.find_elements(By.CSS_SELECTOR, "#studies tbody tr")
    assert [r.find_element(By.CSS_SELECTOR, "td.uid").text for r in rows] == [RECEIVING_UID, FAILED_UID, DONE_UID]
    done_row = rows[2].text
    assert "done" in done_row and "HR+/HER2- (p=0.71) + 1 more lesion" in done_row and "39.50 s" in done_row
    assert "1 failed" in done_row and "1 sent" in done_row
    shoot(browser, screenshots, "studies")

    click_through(browser, By.LINK_TEXT, DONE_UID)
    assert browser.find_element(By.ID, "study-uid").text == DONE_UID
    series = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#series tbody tr")]
    assert len(series) == 3 and "T1 3D post" in series[0]
    prediction = browser.find_element(By.ID, f"prediction-{web.filled.done_job}").text
    assert "Metastasis 2" in prediction and "Outside the training distribution" in prediction
    assert "pipeline.preprocess 20.00 s" in browser.find_element(By.ID, f"job-{web.filled.done_job}").text
    assert browser.find_element(By.ID, "rerun").is_displayed()
    assert browser.find_elements(By.ID, f"resend-{web.filled.dead_delivery}")
    assert not browser.find_elements(By.ID, f"resend-{web.filled.sent_delivery}")  # only failed ones
    shoot(browser, screenshots, "study")

    click_through(browser, By.LINK_TEXT, "Failures")
    assert FAILED_UID in browser.find_element(By.ID, "failed-studies").text
    assert "no DICOM-SEG of the lesions was received" in browser.find_element(By.ID, "failed-jobs").text
    assert browser.find_elements(By.CSS_SELECTOR, f"#failed-deliveries #delivery-{web.filled.dead_delivery}")
    shoot(browser, screenshots, "failures")
    assert [e for e, _, _ in web.events()] == ["web-login-failed", "web-login"]


def test_resend_and_rerun_by_clicking(web: WebNode, browser: WebDriver) -> None:
    open_dashboard(browser, web)
    browser.get(f"{web.base_url}/studies/{DONE_UID}")
    dead = web.filled.dead_delivery
    click_through(browser, By.ID, f"resend-{dead}")
    assert browser.find_element(By.ID, "notice").text == \
        f"Delivery {dead} put back in the outbox; it is sent on the next pass."
    assert "pending" in browser.find_element(By.ID, f"delivery-{dead}").text
    assert not browser.find_elements(By.ID, f"resend-{dead}")
    item = next(d for d in store.deliveries(web.repo) if d.id == dead)
    assert (item.state, item.attempts) == (DeliveryState.PENDING, 0)

    form = {name: browser.find_element(By.CSS_SELECTOR, f"form input[name={name}]").get_attribute("value")
            for name in ("csrf", "after_job")}
    click_through(browser, By.ID, "rerun")
    new_job = web.repo.jobs(DONE_UID)[-1]
    assert new_job.id != web.filled.done_job and new_job.supersedes_job_id == web.filled.done_job
    assert browser.find_element(By.ID, "notice").text == f"Re-run queued as job #{new_job.id}."
    assert browser.find_element(By.ID, "study-state").text == "queued"
    assert "queued" in browser.find_element(By.ID, f"job-{new_job.id}").text
    assert not browser.find_elements(By.ID, "rerun")  # a queued study cannot be re-run again
    assert queued_job_ids(web.queue_folder) == {new_job.id}
    resubmit = """const f = document.createElement('form'); f.method = 'post'; f.action = arguments[0];
        for (const [k, v] of Object.entries(arguments[1])) { const i = document.createElement('input');
          i.type = 'hidden'; i.name = k; i.value = v; f.appendChild(i); }
        document.body.appendChild(f); f.submit();"""
    browser.execute_script(resubmit, f"/studies/{DONE_UID}/rerun", form)  # the same form again: a double submit
    expected = f"This re-run was already requested: job #{new_job.id}."
    WebDriverWait(browser, 15).until(expected_conditions.text_to_be_present_in_element((By.ID, "notice"), expected))
    assert len(web.repo.jobs(DONE_UID)) == 2
    assert [e for e, who, _ in web.events() if who == "web:127.0.0.1"] == [
        "web-login", "web-resend", "web-rerun", "web-rerun"]
