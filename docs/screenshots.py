"""Take the README's screenshots of the running app with the shipped models (real, not a test).

    python docs/screenshots.py            # starts the app, drives Chromium, writes docs/screenshots/

Uses Debian's chromium via Playwright (as the browser test does) and the example image of the
Segment page, so the pictures show what a new user sees after ``make run``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
PAGES = ["home", "segment", "datasets", "weight_maps", "train", "evaluate", "models"]


def wait_idle(page) -> None:
    page.wait_for_timeout(800)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=300_000)
    page.wait_for_timeout(1500)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    port = 8765
    env = {**os.environ, "UNET_STUDIO_RUNS": tempfile.mkdtemp()}
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                               "--server.headless", "true"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.3)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(url, wait_until="domcontentloaded")
            wait_idle(page)
            for name in PAGES:
                page.goto(f"{url}/{name}", wait_until="domcontentloaded")
                wait_idle(page)
                if name == "segment":
                    page.get_by_text("Add the example image").click()
                    wait_idle(page)
                    page.get_by_role("button", name="Segment").first.click()
                    # The first run also tunes the tile size: wait for the result, not the spinner.
                    page.get_by_text("Labels (PNG)").first.wait_for(timeout=300_000)
                    wait_idle(page)
                path = OUT / f"{name}.png"
                # Streamlit scrolls an inner element: make the window as tall as the content first.
                height = page.evaluate(
                    "Math.max(...['stMain', 'stAppViewContainer', 'stMainBlockContainer'].map("
                    "id => document.querySelector(`[data-testid=${id}]`)?.scrollHeight || 0))")
                page.set_viewport_size({"width": 1440, "height": max(1000, min(int(height), 4000))})
                wait_idle(page)
                page.screenshot(path=str(path), full_page=True)
                page.set_viewport_size({"width": 1440, "height": 1000})
                image = Image.open(path).convert("RGB")
                image.thumbnail((1100, 3000))
                image.quantize(colors=128).save(path, optimize=True)
                print("wrote", path.relative_to(REPO))
            browser.close()
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
