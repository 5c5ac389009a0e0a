"""The page of `diffuse serve` in a real headless Chromium: load it, type a prompt, sample, and find
the grid shown at the size the service draws it.

The browser is Debian's (`apt-get install chromium chromium-driver`), driven by Selenium through the
system chromedriver, whose path is given explicitly so Selenium never looks for (or downloads) a
driver of its own. Selenium over Playwright: a pure-Python package that drives the browser the system
already has, where Playwright ships a Node driver and expects browsers of its own builds.
"""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("starlette", reason="the web service needs the serve extra (starlette, uvicorn)")
pytest.importorskip("selenium", reason="the browser test drives Chromium with Selenium (the test extra)")

import diffuse  # noqa: E402
from test_serve import grid_size, train_text_run  # noqa: E402
from diffuse.serve.app import Service  # noqa: E402
from diffuse.serve.jobs import JobQueue  # noqa: E402

CHROMIUM = os.environ.get("DIFFUSE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DIFFUSE_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT = 60  # seconds

for _path, _package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
    if not (os.path.isfile(_path) and os.access(_path, os.X_OK)) and not shutil.which(_path):
        pytest.skip(f"no {_path}: install Debian's {_package} (apt-get install -y chromium chromium-driver)",
                    allow_module_level=True)


def browser(width: int = 1000, height: int = 720):
    """A headless Chromium through the system chromedriver (both checked for when the module loads)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    return webdriver.Chrome(service=DriverService(executable_path=CHROMEDRIVER), options=options)


def sample_on_page(driver, url: str, model: str, *, prompt: str | None = None, labels=(), n: int = 4,
                   steps: int = 3) -> None:
    """Fill the page's form as a person would, press Sample, and wait for the finished grid."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, WAIT).until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#model option[value='{model}']"))
    Select(driver.find_element(By.ID, "model")).select_by_value(model)
    if prompt is not None:
        driver.find_element(By.ID, "prompt").send_keys(prompt)
    for label in labels:
        driver.find_element(By.CSS_SELECTOR, f"#labels input[value='{label}']").click()
    for field, value in (("n", n), ("steps", steps), ("seed", 1)):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(str(value))
    driver.find_element(By.ID, "submit").click()
    WebDriverWait(driver, WAIT).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done"
        or d.find_element(By.ID, "error").text)
    assert not driver.find_element(By.ID, "error").text
    WebDriverWait(driver, WAIT).until(ready.visibility_of_element_located((By.ID, "grid")))


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    started = Service(JobQueue({"shapes": diffuse.load(train_text_run(tmp_path_factory.mktemp("shapes")))})).start()
    yield started
    started.stop()


def test_the_page_samples_a_prompt_and_shows_the_grid(service):
    driver = browser()
    try:
        sample_on_page(driver, service.url + "/", "shapes", prompt="a red circle above a blue square", n=3)
        size = driver.execute_script("const g = document.getElementById('grid');"
                                     "return [g.complete, g.naturalWidth, g.naturalHeight];")
        assert size == [True, *grid_size(3, (3, 32, 32))]
        status = driver.find_element("id", "status").text
        assert "done, step 3 of 3" in status, status
        download = driver.find_element("id", "download").get_attribute("href")
        assert download.endswith("/grid.png") and len(driver.find_elements("css selector", "#images a")) == 3
    finally:
        driver.quit()
