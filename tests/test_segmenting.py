"""The Segment page's engine side (``unet_core.studio.segmenting``), without a page: one image
becomes an outcome with the CLI's files, a failing one a message; the session state lets the oldest
results go past the memory budget; new post-processing options re-derive objects with no network pass."""

from __future__ import annotations

import numpy as np

from unet_core.inference import InferenceOptions
from unet_core.instances import InstanceOptions
from unet_core.io import ImageFile
from unet_core.predict import result_files, run
from unet_core.runtime import load_predictor
from unet_core.studio.keep import RESULTS_BUDGET_ENV
from unet_core.studio.segmenting import Source, repost, result_state, segment_one

OPTIONS = InferenceOptions(tile=100, tta=False)


def _source(key: str, seed: int) -> Source:
    pixels = np.random.default_rng(seed).integers(0, 255, (1, 160, 180, 1), dtype=np.uint8)
    return Source(key, f"{key}.png", lambda: ImageFile(f"{key}.png", pixels), pixels.size)



def test_outcomes_state_budget_and_repost(tiny_model, monkeypatch) -> None:
    predictor = load_predictor(tiny_model[1], "cpu")
    sources = [_source("a", 1), _source("b", 2)]
    outcomes = {s.key: segment_one(s, predictor, OPTIONS, InstanceOptions(), lambda done, total: None)
                for s in sources}
    first = outcomes["a"]
    assert first.error is None and first.result.n_objects > 0
    assert first.files == result_files(run(sources[0].load(), predictor, OPTIONS, InstanceOptions()))
    assert first.foreground.shape == (1, 160, 180) and first.foreground.dtype == np.float16

    # Past the budget the oldest result is let go with a message; the newest is kept.
    monkeypatch.setenv(RESULTS_BUDGET_ENV, str(1.5 * first.nbytes / (1 << 30)))
    state = result_state(("settings",), "post", ("a", "b"), outcomes)
    assert state["outcomes"]["a"].let_go and "let go" in state["outcomes"]["a"].error
    assert not state["outcomes"]["b"].let_go and state["zip"] is None  # one result left: no zip

    # New post-processing: the objects of a fresh run with those options, without the network.
    monkeypatch.delenv(RESULTS_BUDGET_ENV)
    state = result_state(("settings",), "post", ("a", "b"), outcomes)
    monkeypatch.setattr(type(predictor), "predict_batch", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    stricter = InstanceOptions(min_size=40, drop_border=True)
    again = repost(state, predictor, stricter, "stricter")
    monkeypatch.undo()
    fresh = run(sources[1].load(), predictor, OPTIONS, stricter)
    assert again["post"] == "stricter" and again["outcomes"]["b"].result.n_objects == fresh.n_objects
    assert again["outcomes"]["b"].files == result_files(fresh)
    assert again["zip"] is not None  # two results: the "All results" zip is made again


def test_a_file_that_cannot_be_read_becomes_a_message(tiny_model) -> None:
    from unet_core.io import read_image_bytes

    predictor = load_predictor(tiny_model[1], "cpu")
    broken = Source("x", "broken.png", lambda: read_image_bytes(b"\x89PNG\r\n\x1a\n broken", "broken.png"))
    outcome = segment_one(broken, predictor, OPTIONS, InstanceOptions(), lambda done, total: None)
    assert outcome.result is None and outcome.error and not outcome.error.startswith("broken.png")
    assert "Fiji" in outcome.advice
