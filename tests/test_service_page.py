"""The status page in a real headless browser: it shows the served node's numbers, refreshes by
itself, shows the newest frame, and says "disconnected" when the node goes away.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from stream_node.deploy.api import ApiServer
from stream_node.deploy.run_states import ServiceCore

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
WAIT_S = 20  # a poll is every second; this is the bound on a slow, shared machine

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="needs /usr/bin/chromium and /usr/bin/chromedriver: "
                              "apt-get install chromium chromium-driver"),
]


def frame_png(shape: tuple[int, int] = (48, 64)) -> bytes:
    """A real PNG of a gradient, as a node's frame provider would give it."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out = io.BytesIO()
    plt.imsave(out, np.arange(shape[0] * shape[1]).reshape(shape), format="png")
    return out.getvalue()


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1100"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                              options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Stages:
    """The stage snapshot a serving node would give; the test changes its numbers."""

    def __init__(self) -> None:
        self.set(frames=643, fps=123.4, gbps=1.25, drops=2, occupancy=5)

    def set(self, frames: int, fps: float, gbps: float, drops: int, occupancy: int) -> None:
        self.stages = [
            {"role": "source", "name": "det1-source", "state": "running", "frames": frames,
             "bytes": frames * 1_048_576, "rates": {"frames_per_s": fps, "gbytes_per_s": gbps},
             "dropped": {"late": drops, "unknown_run": 0},
             "ring": {"occupancy": occupancy, "slots": 64}},
            {"role": "collector", "name": "det1-collector", "state": "running",
             "frames": frames - 3, "rates": {"frames_per_s": fps, "gbytes_per_s": gbps},
             "dropped": {}, "ring": None},
        ]

    def __call__(self) -> list[dict]:
        return self.stages


def field(driver, css: str) -> str:
    """The element's DOM text (as the page wrote it, before CSS changes its case)."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).get_attribute("textContent").strip()


def wait_text(driver, css: str, expected: str) -> None:
    """Until the element shows `expected` (the page polls once a second), at most WAIT_S."""
    from selenium.common.exceptions import NoSuchElementException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    def shows(d) -> bool:
        try:
            return field(d, css) == expected
        except NoSuchElementException:
            return False

    try:
        WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(shows)
    except TimeoutException:
        shown = driver.find_element("css selector", "body").text
        raise AssertionError(f"{css} never showed {expected!r}; the page:\n{shown}") from None


def stage_cell(stage: str, name: str) -> str:
    return f'#stages tr[data-stage="{stage}"] td[data-field="{name}"]'


def run_cell(run: int, name: str) -> str:
    return f'#runs tr[data-run="{run}"] td[data-field="{name}"]'


def test_the_page_shows_the_node_refreshes_by_itself_and_shows_the_frame(browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    core = ServiceCore("det1")
    stages = Stages()
    core.set_stages(stages)
    png = frame_png()
    core.set_frame(lambda: png)
    core.configure({"series": "lyso_01", "frames": 1000})
    core.begin_run("lyso_01", "det1_lyso_01_00001.h5", run_id=0x1234, frames_expected=1000)
    core.update_run(640, 3)
    server = ApiServer(core)
    try:
        browser.get(server.url + "/")
        wait_text(browser, "#current-frames-written", "640")
        assert field(browser, "#node") == "det1"
        assert field(browser, "#state") == "running"
        assert "state-running" in browser.find_element("id", "state").get_attribute("class")
        assert field(browser, "#safe-to-arm") == "not ready to arm (running)"
        assert field(browser, "#current-run") == "1"
        assert field(browser, "#current-run-id") == "0x0000000000001234"
        assert field(browser, "#current-series") == "lyso_01"
        assert field(browser, "#current-file") == "det1_lyso_01_00001.h5"
        assert field(browser, "#current-frames-expected") == "1000"
        assert field(browser, "#current-missing") == "3"
        for name, value in [("role", "source"), ("state", "running"), ("frames_per_s", "123.4"),
                            ("gbytes_per_s", "1.25"), ("frames", "643"), ("dropped", "2"),
                            ("ring", "5/64")]:
            assert field(browser, stage_cell("det1-source", name)) == value, name
        assert field(browser, stage_cell("det1-collector", "frames")) == "640"
        assert field(browser, stage_cell("det1-collector", "ring")) == "\u2014"  # none
        assert field(browser, run_cell(1, "state")) == "running"
        assert field(browser, '#config dd[data-field="frames"]') == "1000"

        # The frame: loaded by the browser, a real image of the provider's size.
        WebDriverWait(browser, WAIT_S, poll_frequency=0.1).until(
            lambda d: d.execute_script("return document.getElementById('frame').naturalWidth"))
        assert browser.execute_script(
            "const f = document.getElementById('frame'); return [f.naturalWidth, "
            "f.naturalHeight, f.hidden]") == [64, 48, False]

        # The node moves on; nobody reloads the page.
        core.end_run(0, 1000, 0, "complete", then="armed")
        core.begin_run("lyso_02", "det1_lyso_02_00002.h5", run_id=0x1235, frames_expected=500)
        core.update_run(250, 0)
        stages.set(frames=2250, fps=987.6, gbps=2.5, drops=7, occupancy=60)
        wait_text(browser, "#current-run", "2")
        wait_text(browser, stage_cell("det1-source", "frames"), "2250")
        assert field(browser, "#current-frames-written") == "250"
        assert field(browser, "#current-frames-expected") == "500"
        assert field(browser, stage_cell("det1-source", "frames_per_s")) == "987.6"
        assert field(browser, stage_cell("det1-source", "dropped")) == "7"
        assert field(browser, stage_cell("det1-source", "ring")) == "60/64"
        for name, value in [("series", "lyso_01"), ("file", "det1_lyso_01_00001.h5"),
                            ("frames_written", "1000"), ("missing", "0"), ("exit_code", "0"),
                            ("state", "done")]:
            assert field(browser, run_cell(1, name)) == value, name
        assert field(browser, run_cell(2, "state")) == "running"
        assert field(browser, "#counter-runs") == "2"
        assert field(browser, "#counter-frames-written") == "1250"
        browser.save_screenshot(str(tmp_path / "page.png"))  # mid-run: every part filled in
        shutil.copy(tmp_path / "page.png", "/tmp/service_page.png")
        assert (tmp_path / "page.png").stat().st_size > 10_000

        # Between series: armed, and the page says it is safe to arm.
        core.end_run(0, 500, 0, then="armed")
        wait_text(browser, "#state", "armed")
        assert field(browser, "#safe-to-arm").startswith("safe to arm")
        assert not browser.find_element("id", "current-run-fields").is_displayed()
    finally:
        server.close()

    # The node is gone: the page says so instead of showing the old numbers as current.
    wait_text(browser, "#state", "disconnected")
    assert browser.find_element("id", "disconnected").is_displayed()
    assert field(browser, "#connection").startswith("disconnected")


def test_the_page_hides_the_frame_while_there_is_none_and_shows_a_failing_stage(browser):
    core = ServiceCore("det2")
    core.set_stages([lambda: {"role": "worker", "name": "w0", "state": "waiting", "frames": 0},
                     lambda: 1 / 0])
    with ApiServer(core) as server:
        browser.get(server.url + "/")
        wait_text(browser, "#state", "idle")
        wait_text(browser, "#no-frame", "no frame yet")
        assert not browser.find_element("id", "frame").is_displayed()
        assert field(browser, "#no-current") == "no run in progress"
        assert field(browser, stage_cell("w0", "state")) == "waiting"
        assert "ZeroDivisionError" in field(browser, stage_cell("1", "error"))
