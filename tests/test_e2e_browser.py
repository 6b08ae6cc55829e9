"""The real thing: ``streamlit run app.py`` driven by headless Chromium through Playwright.

A user opens the app by a deep link on a fresh server, goes to Segment, drops a PNG, picks a tile size, segments it and downloads
the label PNG, which must equal what ``python -m unet_core predict`` writes, pixel for pixel.
Screenshots of every page land in ``test-artifacts/screenshots/`` for a human look.

This test fails (it does not skip) when Chromium or Playwright is missing: ``make test`` installs
both, and a silently skipped browser test would hide a broken app.
"""

from __future__ import annotations

import io
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import tifffile
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TILE = 100
WAIT_MS = 120_000  # the first segmentation imports onnxruntime on a shared 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def studio_url(tmp_path: Path, tiny_model_dir: Path) -> Iterator[str]:
    """A Streamlit server for the app with the tiny model as its only model; its URL."""
    port = free_port()
    env = {**os.environ, "UNET_STUDIO_MODELS": str(tiny_model_dir),
           "UNET_STUDIO_RUNS": str(tmp_path / "runs"), "UNET_STUDIO_CACHE": str(tmp_path / "cache"),
           "UNET_STUDIO_UPLOADS": str(tmp_path / "uploads")}
    log_path = tmp_path / "streamlit.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.port", str(port), "--server.fileWatcherType", "none",
             "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.read() == b"ok":
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start:\n{log_path.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=20)


def settle(page: Page) -> None:
    """Wait until Streamlit has finished running the script and every image has loaded.

    Call it after waiting for content the run produces: right after a click the script may not
    have started yet, and the app still reads "notRunning".
    """
    expect(page.get_by_test_id("stApp")).to_have_attribute("data-test-script-state", "notRunning",
                                                           timeout=WAIT_MS)
    page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=WAIT_MS)


def shoot(page: Page, name: str) -> None:
    """Screenshot of the whole page: Streamlit scrolls an inner element, so the window is made as
    tall as the content first (``full_page`` alone would stop at the first screen)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    viewport = page.viewport_size
    height = page.evaluate(
        "Math.max(...['stMain', 'stAppViewContainer', 'stMainBlockContainer'].map("
        "id => document.querySelector(`[data-testid=${id}]`)?.scrollHeight || 0))"
    )
    page.set_viewport_size({"width": viewport["width"], "height": max(viewport["height"], height)})
    settle(page)
    page.screenshot(path=SCREENSHOTS / f"{name}.png")
    page.set_viewport_size(viewport)


def test_segment_in_a_browser_matches_the_cli(studio_url: str, tiny_model_dir: Path, tmp_path: Path,
                                              cells_image) -> None:
    assert CHROMIUM.is_file(), "the browser test needs Debian's chromium: apt-get install -y chromium"
    image_path = tmp_path / "cells.png"
    Image.fromarray(cells_image()).save(image_path)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
            hosts: set[str] = set()
            page.on("request", lambda r: hosts.add(urlsplit(r.url).netloc)
                    if urlsplit(r.url).scheme in ("http", "https", "ws", "wss") else None)
            # The first visit to a fresh server is a deep link: the app's menu, model chooser and
            # device line are there (not Streamlit's raw list of the pages/ folder's scripts).
            page.goto(f"{studio_url}/segment", wait_until="domcontentloaded")
            expect(page.get_by_role("heading", name="Segment")).to_be_visible(timeout=WAIT_MS)
            nav = page.get_by_test_id("stSidebarNav")
            expect(nav.get_by_role("link", name="Weight maps")).to_be_visible(timeout=WAIT_MS)
            expect(nav.get_by_text("common", exact=True)).to_have_count(0)
            expect(page.get_by_text("Running on", exact=False)).to_be_visible(timeout=WAIT_MS)
            settle(page)
            nav.get_by_role("link", name="Home").click()
            expect(page.get_by_role("heading", name="U-Net Studio")).to_be_visible(timeout=WAIT_MS)
            expect(page.get_by_text("Classes:")).to_be_visible(timeout=WAIT_MS)  # the model card
            expect(page.get_by_test_id("stMain").get_by_role("link", name="Segment")).to_be_visible()
            settle(page)
            shoot(page, "home")

            page.get_by_test_id("stSidebarNav").get_by_role("link", name="Segment").click()
            expect(page.get_by_role("heading", name="Segment")).to_be_visible(timeout=WAIT_MS)
            expect(page.get_by_text("Tile size")).to_be_visible(timeout=WAIT_MS)
            settle(page)
            shoot(page, "segment-empty")

            page.locator("input[type=file]").set_input_files(image_path)
            expect(page.get_by_text("cells.png")).to_be_visible(timeout=WAIT_MS)
            page.get_by_test_id("stSelectbox").filter(has_text="Tile size").click()
            page.get_by_role("option", name=f"{TILE} × {TILE} pixels").click()
            run_button = page.get_by_role("button", name="Segment 1 image")
            expect(run_button).to_be_enabled(timeout=WAIT_MS)
            run_button.click()
            expect(page.get_by_text("objects, one colour each")).to_be_visible(timeout=WAIT_MS)
            expect(page.get_by_test_id("stDataFrame")).to_be_visible(timeout=WAIT_MS)
            shoot(page, "segment-result")
            # The viewer zooms with the mouse wheel: the visible x range shrinks around the pointer.
            viewer = page.locator(".js-plotly-plot").first
            viewer.scroll_into_view_if_needed()
            x_range = "() => document.querySelector('.js-plotly-plot')._fullLayout.xaxis.range.slice()"
            before = page.evaluate(x_range)
            box = viewer.bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.wheel(0, -300)
            page.wait_for_function(f"({x_range})()[1] - ({x_range})()[0] < {before[1] - before[0]} * 0.97",
                                   timeout=WAIT_MS)

            with page.expect_download(timeout=WAIT_MS) as download:
                page.get_by_test_id("stDownloadButton").filter(has_text="Labels (PNG)").click()
            assert download.value.suggested_filename == "cells_labels.png"
            from_browser = tmp_path / "browser_labels.png"
            download.value.save_as(from_browser)
            with page.expect_download(timeout=WAIT_MS) as download:
                page.get_by_test_id("stDownloadButton").filter(has_text="ROIs for Fiji").click()
            assert download.value.suggested_filename == "cells_RoiSet.zip"
            rois_from_browser = tmp_path / "browser_RoiSet.zip"
            download.value.save_as(rois_from_browser)

            # Fixing by hand: a click on an object's dot picks it, Remove takes it out of the count.
            count = page.get_by_test_id("stMetric").filter(has_text="Objects").get_by_test_id("stMetricValue")
            before = int(count.inner_text().replace(",", ""))
            viewer.scroll_into_view_if_needed()
            # A dot inside the (zoomed) plot area: the others are drawn outside it, hidden.
            x, y = page.evaluate("""() => {
                const area = document.querySelector('.js-plotly-plot .nsewdrag').getBoundingClientRect();
                for (const p of document.querySelectorAll('.js-plotly-plot .scatterlayer .point')) {
                    const r = p.getBoundingClientRect(), x = r.x + r.width / 2, y = r.y + r.height / 2;
                    if (x > area.left + 5 && x < area.right - 5 && y > area.top + 5 && y < area.bottom - 5)
                        return [x, y];
                }
            }""")
            page.mouse.click(x, y)
            expect(page.get_by_text("Picked: ")).to_be_visible(timeout=WAIT_MS)
            page.get_by_role("button", name="Remove", exact=True).click()
            expect(page.get_by_text("Corrected by hand: removed object")).to_be_visible(timeout=WAIT_MS)
            assert int(count.inner_text().replace(",", "")) == before - 1
            # The corrected image as a training set: made when the button is pressed.
            with page.expect_download(timeout=WAIT_MS) as download:
                page.get_by_test_id("stDownloadButton").filter(has_text="Training set").click()
            training = tmp_path / "training.zip"
            download.value.save_as(training)
            with zipfile.ZipFile(training) as archive:
                assert sorted(archive.namelist()) == ["unet-studio-training/images/cells.png",
                                                      "unet-studio-training/masks/cells.tif"]
                mask = tifffile.imread(io.BytesIO(archive.read("unet-studio-training/masks/cells.tif")))
            assert int(mask.max()) == before - 1  # the removed object is not in it
            page.get_by_role("button", name="Undo", exact=True).click()
            expect(page.get_by_text("Corrected by hand")).to_have_count(0, timeout=WAIT_MS)
            assert int(count.inner_text().replace(",", "")) == before
            # A missed nucleus: drawn round with the lasso from the chart's toolbar, then Add.
            viewer = page.locator(".js-plotly-plot").first
            viewer.scroll_into_view_if_needed()
            viewer.hover()
            viewer.locator('.modebar-btn[data-val="lasso"]').click()
            area = viewer.locator(".nsewdrag").first.bounding_box()
            cx, cy, r = area["x"] + area["width"] / 2, area["y"] + area["height"] / 2, area["width"] / 5
            page.mouse.move(cx + r, cy)
            page.mouse.down()
            for k in range(1, 25):
                angle = 2 * math.pi * k / 24
                page.mouse.move(cx + r * math.cos(angle), cy + r * math.sin(angle), steps=2)
            page.mouse.up()
            add = page.get_by_role("button", name="Add", exact=True)
            expect(add).to_be_enabled(timeout=WAIT_MS)
            add.click()
            expect(page.get_by_text("Corrected by hand: drew a new object")).to_be_visible(timeout=WAIT_MS)
            assert int(count.inner_text().replace(",", "")) == before + 1
            shoot(page, "segment-drawn")

            # The training pages, each from its default (synthetic images, the tiny model): they
            # draw without an exception, and a screenshot of each is kept for a human look.
            # Train and Evaluate are drawn as they open (nothing is trained or evaluated here).
            for title, ready, charts, name in (("Datasets", "All objects", 3, "datasets"),
                                               ("Weight maps", "Largest weight", 3, "weight-maps"),
                                               ("Models", "Details of", 0, "models"),
                                               ("Train", "Training settings", 0, "train"),
                                               ("Evaluate", "Images to score", 0, "evaluate")):
                page.get_by_test_id("stSidebarNav").get_by_role("link", name=title).click()
                expect(page.get_by_role("heading", name=title)).to_be_visible(timeout=WAIT_MS)
                expect(page.get_by_text(ready, exact=True)).to_be_visible(timeout=WAIT_MS)
                # Plotly draws after the script has finished; the page is only full height then.
                drawn = f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {charts}"
                page.wait_for_function(drawn, timeout=WAIT_MS)
                expect(page.get_by_test_id("stException")).to_have_count(0)
                shoot(page, name)
            # Corrections made in QuPath or Fiji come back: a zip of the images and their exported
            # outlines (here the app's own downloads) opens on the Train page as a data set.
            annotated = tmp_path / "annotated.zip"
            with zipfile.ZipFile(annotated, "w") as archive:
                for name in ("cells", "cells2"):  # two: one of them is held out for validation
                    archive.write(image_path, f"project/images/{name}.png")
                    archive.write(rois_from_browser, f"project/annotations/{name}_RoiSet.zip")
            page.get_by_test_id("stSidebarNav").get_by_role("link", name="Train").click()
            expect(page.get_by_role("heading", name="Train")).to_be_visible(timeout=WAIT_MS)
            page.get_by_text("Zip upload", exact=True).first.click()
            page.locator("input[type=file]").first.set_input_files(annotated)
            expect(page.get_by_text("2 images", exact=True)).to_be_visible(timeout=WAIT_MS)
            expect(page.get_by_test_id("stAlert")).to_have_count(0)
            # Back on Segment, the result is still there (the upload box has emptied).
            page.get_by_test_id("stSidebarNav").get_by_role("link", name="Segment").click()
            expect(page.get_by_text("Results of your last run (cells.png)")).to_be_visible(timeout=WAIT_MS)
            expect(page.get_by_text("objects, one colour each")).to_be_visible(timeout=WAIT_MS)
        finally:
            browser.close()
    # The app works offline: nothing it loads (icons, fonts, telemetry) comes from another host.
    assert hosts == {urlsplit(studio_url).netloc}, f"requests left the machine: {sorted(hosts)}"

    cli_out = tmp_path / "cli"
    subprocess.run(
        [sys.executable, "-m", "unet_core", "predict", str(image_path),
         "--model", str(tiny_model_dir / "tiny.onnx"), "--out", str(cli_out), "--tile", str(TILE)],
        cwd=REPO, check=True, capture_output=True,
        env={**os.environ, "UNET_STUDIO_CACHE": str(tmp_path / "cache")},
    )
    browser_labels = np.asarray(Image.open(from_browser))
    cli_labels = np.asarray(Image.open(cli_out / "cells_labels.png"))
    assert browser_labels.dtype == np.uint8 and browser_labels.shape == (260, 300)
    np.testing.assert_array_equal(browser_labels, cli_labels)
    assert len(np.unique(cli_labels)) > 1, "a one-class result would make the comparison meaningless"
    assert rois_from_browser.read_bytes() == (cli_out / "cells_RoiSet.zip").read_bytes()


def test_segmenting_can_be_stopped_between_tiles_and_finished_later(studio_url: str, tmp_path: Path) -> None:
    """Large uploads: the page says how much there is to do, Stop ends the run at the next tile and
    keeps the finished images, and Segment then does only the rest."""
    yy, xx = np.mgrid[0:2400, 0:2400]
    paths = []
    for k in range(3):
        blobs = ((np.sin(xx / (9.0 + k)) * np.cos(yy / 11.0)) > 0.6).astype(np.uint8) * 150 + 30
        paths.append(tmp_path / f"big{k}.png")
        Image.fromarray(blobs).save(paths[-1])

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(f"{studio_url}/segment", wait_until="domcontentloaded")
            expect(page.get_by_role("heading", name="Segment")).to_be_visible(timeout=WAIT_MS)
            settle(page)
            page.locator("input[type=file]").set_input_files(paths)
            expect(page.get_by_text("To segment: 17.3 megapixels")).to_be_visible(timeout=WAIT_MS)
            page.get_by_role("button", name="Segment 3 images").click()
            expect(page.get_by_text("image 2 of 3")).to_be_visible(timeout=WAIT_MS)
            page.get_by_role("button", name="Stop").click()
            expect(page.get_by_text("Stopped after 1 of 3 images")).to_be_visible(timeout=WAIT_MS)
            settle(page)
            expect(page.get_by_text("big0.png").first).to_be_visible()
            # The random model finds ~400k specks: the viewer marks a sample and the table a part.
            expect(page.get_by_text("point at a marked object (one in")).to_be_visible()
            expect(page.get_by_text("the CSV download has all")).to_be_visible()
            shoot(page, "segment-stopped")
            # The speed is measured now: the rest is announced with its time, then done.
            expect(page.get_by_text("To segment: 11.5 megapixels, about")).to_be_visible(timeout=WAIT_MS)
            page.get_by_role("button", name="Segment 3 images").click()
            expect(page.get_by_role("heading", name="3 images")).to_be_visible(timeout=WAIT_MS)
            expect(page.get_by_text("Stopped after")).to_have_count(0)
            expect(page.get_by_test_id("stException")).to_have_count(0)
        finally:
            browser.close()
