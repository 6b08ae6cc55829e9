"""What the page tests (Streamlit AppTest) share: the app's path, time limits, and opening a page
the way a user does (Home first, then the page)."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")
# First runs import onnxruntime (and torch, for training pages) on a shared 2-core machine:
# generous, never hit when well.
TIMEOUT = 120
TILE = 100  # a valid output size of the tiny depth-4 network; several tiles per test image


def open_page(page: str, session: dict | None = None) -> AppTest:
    """The app opened at Home, then switched to ``page`` (e.g. ``"pages/segment.py"``);
    ``session`` presets session-state keys before the first run."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in (session or {}).items():
        at.session_state[key] = value
    at.run()
    assert not at.exception
    at.switch_page(page).run()
    assert not at.exception
    return at


def segment_page() -> AppTest:
    """The app opened at Home, then switched to Segment."""
    return open_page("pages/segment.py")


def upload(at: AppTest, *files: tuple[str, bytes, str]) -> AppTest:
    """Upload ``files`` (name, bytes, MIME type) on the Segment page and choose the fixed tile size."""
    at.file_uploader[0].set_value(list(files)).run()
    next(s for s in at.selectbox if s.label == "Tile size").set_value(TILE).run()
    return at


def texts(elements) -> str:
    """The values of AppTest elements, one per line."""
    return "\n".join(str(e.value) for e in elements)
