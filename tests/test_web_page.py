"""The web page of ``d2r serve`` in a real headless browser (Debian's chromium and
chromium-driver through Selenium): upload, draw a box, results appear, a match view
opens, the photo is added."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("requests")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests._server import Server, photo_index  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Debian's chromium and chromium-driver")


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER),
                              options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tiny_dataset, tmp_path_factory):
    index = photo_index(tiny_dataset, tmp_path_factory.mktemp("page"))
    with Server(index, "--allow-writes") as running:
        yield running


def test_search_box_match_view_and_add(browser, server, tiny_dataset):
    query = sorted((tiny_dataset / "jpg").glob("synth_q_*.jpg"))[0]
    wait = WebDriverWait(browser, 60)
    browser.get(server.url + "/")
    wait.until(lambda d: "16 images indexed" in d.find_element(By.ID, "about").text)
    browser.find_element(By.ID, "file").send_keys(str(query))
    wait.until(ec.element_to_be_clickable((By.ID, "search")))

    stage = browser.find_element(By.ID, "stage")
    ActionChains(browser).move_to_element_with_offset(stage, -100, -60).click_and_hold() \
        .move_by_offset(180, 110).release().perform()
    assert browser.find_element(By.ID, "boxtext").text.startswith("Box: ")
    browser.find_element(By.ID, "clearbox").click()
    assert browser.find_element(By.ID, "boxtext").text == ""

    rerank = browser.find_element(By.ID, "rerank")
    rerank.clear()
    rerank.send_keys("16")
    browser.find_element(By.ID, "search").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == 16)
    assert "verified" in browser.find_element(By.ID, "status").text
    first = browser.find_element(By.CSS_SELECTOR, "#results .result")
    assert "#1 · score" in first.text and "inliers" in first.text
    wait.until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#results img')].every(i => i.complete && "
        "i.naturalWidth > 0)"))

    if os.environ.get("D2R_SCREENSHOT"):  # the README's picture
        browser.save_screenshot(os.environ["D2R_SCREENSHOT"])
    assert "framed green" in browser.find_element(By.ID, "status").text
    browser.find_element(By.CSS_SELECTOR, "#results .result.verified.matched").click()
    wait.until(lambda d: d.find_element(By.ID, "match").get_attribute("open") is not None)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#matchview path.match")) > 0
    assert "matched points drawn" in browser.find_element(By.ID, "matchtitle").text
    browser.find_element(By.ID, "closematch").click()

    name = browser.find_element(By.ID, "name")
    name.clear()
    name.send_keys("from the page.jpg")
    browser.find_element(By.ID, "add").click()
    wait.until(lambda d: "Added from the page.jpg" in d.find_element(By.ID, "status").text)
    wait.until(lambda d: "17 images indexed" in d.find_element(By.ID, "about").text)
    assert (Path(server.command[server.command.index("--index") + 1]) / "uploads"
            / "from the page.jpg").is_file()
