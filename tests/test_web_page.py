"""The web page of ``d2r serve`` in a real headless browser (Debian's chromium and
chromium-driver through Selenium): nothing broken before a photo is chosen, upload, draw a
box, results appear (captions unbroken, a verification time only when verified), a match
view opens, the photo is added; a form on a page of another site cannot add one."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
requests = pytest.importorskip("requests")
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
    assert not browser.find_element(By.ID, "preview").is_displayed()  # no broken-image icon
    assert browser.find_element(By.ID, "stage").size["height"] == 0
    browser.find_element(By.ID, "file").send_keys(str(query))
    wait.until(ec.element_to_be_clickable((By.ID, "search")))
    assert browser.find_element(By.ID, "preview").is_displayed()

    rerank = browser.find_element(By.ID, "rerank")
    rerank.clear()
    rerank.send_keys("0")
    browser.find_element(By.ID, "search").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == 16)
    assert "not spatially verified" in browser.find_element(By.ID, "status").text
    assert "verification" not in browser.find_element(By.ID, "status").text

    stage = browser.find_element(By.ID, "stage")
    ActionChains(browser).move_to_element_with_offset(stage, -100, -60).click_and_hold() \
        .move_by_offset(180, 110).release().perform()
    assert browser.find_element(By.ID, "boxtext").text.startswith("Box: ")
    browser.find_element(By.ID, "clearbox").click()
    assert browser.find_element(By.ID, "boxtext").text == ""

    rerank.clear()
    rerank.send_keys("16")
    browser.find_element(By.ID, "search").click()
    wait.until(lambda d: "checked were verified" in d.find_element(By.ID, "status").text)
    assert "verification" in browser.find_element(By.ID, "status").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results .result")) == 16
    first = browser.find_element(By.CSS_SELECTOR, "#results .result")
    assert "#1 · score" in first.text and "inliers" in first.text and "-log10 NFA" in first.text
    rows = requests.post(server.url + "/search", files={"image": ("q.jpg", query.read_bytes())},
                         data={"rerank": "16"}, timeout=60).json()["results"]
    green = [card.get_attribute("data-rank") for card in
             browser.find_elements(By.CSS_SELECTOR, "#results .result.verified")]
    assert green == [str(r["rank"]) for r in rows if r["verified"]] and green
    assert (f"{len(green)} of the 16 checked were verified (a-contrario, -log10 NFA >= 3: at "
            f"most 1 false in 1,000 unrelated pairs expected, framed green)"
            in browser.find_element(By.ID, "status").text)
    browser.set_window_size(420, 1000)  # one narrow card per row: "inliers" stays one word
    lines = browser.execute_script(
        "return [...document.querySelectorAll('#results .caption span')]"
        ".filter(s => s.textContent.endsWith('inliers')).map(s => s.getClientRects().length)")
    assert len(lines) == 16 and set(lines) == {1}
    browser.set_window_size(1280, 1000)
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

    # the frame follows the decision's flag, not the inlier count
    browser.execute_script("""showResults({timing: {total_s: 1, extract_s: 0.5, search_s: 0.1,
      rerank_s: 0.4}, results: [
      {rank: 1, name: arguments[0], score: 0.9, verified: false, inliers: 50,
       verification_score: 3.25},
      {rank: 2, name: arguments[0], score: 0.5, verified: true, inliers: 9,
       verification_score: 14.5},
      {rank: 3, name: arguments[0], score: 0.1, verified: false}]})""", rows[0]["name"])
    cards = browser.find_elements(By.CSS_SELECTOR, "#results .result")
    assert ["verified" in card.get_attribute("class").split() for card in cards] == \
        [False, True, False]
    assert "50 inliers · -log10 NFA 3.3" in cards[0].text and "verified" not in cards[0].text
    assert "9 inliers · -log10 NFA 14.5 · verified" in cards[1].text
    assert "1 of the 2 checked were verified" in browser.find_element(By.ID, "status").text

    name = browser.find_element(By.ID, "name")
    name.clear()
    name.send_keys("from the page.jpg")
    browser.find_element(By.ID, "add").click()
    wait.until(lambda d: "Added from the page.jpg" in d.find_element(By.ID, "status").text)
    wait.until(lambda d: "17 images indexed" in d.find_element(By.ID, "about").text)
    assert (Path(server.command[server.command.index("--index") + 1]) / "uploads"
            / "from the page.jpg").is_file()


def test_a_form_on_another_site_cannot_add_a_photo(browser, server, tmp_path):
    """A page served from another origin posts a multipart form to /images: refused."""
    (tmp_path / "forge.html").write_text(
        f'<form method="post" enctype="multipart/form-data" action="{server.url}/images">'
        f'<input name="name" value="forged.jpg"></form>'
        f"<script>document.forms[0].submit()</script>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    foreign = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    try:
        images = requests.get(server.url + "/health", timeout=10).json()["images"]
        browser.get(f"http://127.0.0.1:{foreign.server_address[1]}/forge.html")
        WebDriverWait(browser, 60).until(
            lambda d: "only pages of this server may send it" in d.find_element(
                By.TAG_NAME, "body").text)
        assert requests.get(server.url + "/health", timeout=10).json()["images"] == images
        assert not (Path(server.command[server.command.index("--index") + 1]) / "uploads"
                    / "forged.jpg").exists()
    finally:
        foreign.shutdown()
