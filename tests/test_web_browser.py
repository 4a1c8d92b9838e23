"""The live view in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright; no
browser is ever downloaded): the page loads under its Content-Security-Policy, frames advance, a click
on the nerve places the seed and the contour appears there, a drag sets the ROI, a touch tap works,
tapping in a line mode sets that thickness line's click, context and capture, a stream without
spacing shows pixels and says so, a lifted probe shows no measurement and says why; screenshots are
saved under ``artifacts/webview/`` (git-ignored) and their paths printed."""

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mmstream.config import load_config
from mmstream.service import Service
from mmstream.source import FrameSender, SourceFrame, pump
from test_graph import RANDOM_TCP, wait_for

playwright = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' installs playwright")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
ARTIFACTS = Path(os.environ.get("MMSTREAM_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts")) / "webview"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium missing: tools/test.sh installs it")


PATIENT = "PSEUDO-42"
STORED = [  # test values for the fusion card, not clinical data
    ("tibialis_anterior", "fat_fraction", 0.2, "1"), ("soleus", "fat_fraction", 0.8, "1"),
    ("gastrocnemius_medialis", "fat_fraction", 0.06, "1"), ("rectus_femoris", "t2_water_ms", 40.0, "ms"),
]  # fmt: skip
REFERENCE = {"source": "test values (not clinical)", "entries": [
    {"biomarker": b, "site": s, "abnormal": "high", "mean": m, "sd": sd}
    for s in ("tibialis_anterior", "soleus", "gastrocnemius_medialis", "rectus_femoris")
    for b, m, sd in (("fat_fraction", 0.05, 0.02), ("t2_water_ms", 30.0, 2.0))
]}  # fmt: skip


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    """The service with the sim probe, a recorder directory and a biomarker store (fusion runs)."""
    from mmstream.biomarkers import BiomarkerStore, parse_record

    d = tmp_path_factory.mktemp("webview")
    (d / "recordings").mkdir()
    with BiomarkerStore(d / "bio.db") as store:
        store.add([parse_record({"patient_id": PATIENT, "site": site, "side": "left", "modality": "MRI", "biomarker": b,
                                 "value": v, "unit": u, "acquired_on": "2026-01-10"}) for site, b, v, u in STORED])  # fmt: skip
    (d / "reference.json").write_text(json.dumps(REFERENCE))
    cfg = load_config(
        None, endpoints=RANDOM_TCP, web={"port": 0}, sources=[{"driver": "sim", "stream_id": "sim", "fps": 30}],
        recorder={"directory": str(d / "recordings")},
        biomarkers={"store": str(d / "bio.db"), "echo_reference": str(d / "reference.json"), "end_stage_fat_fraction": 0.6},
    )  # fmt: skip
    with Service(cfg) as s:
        assert s.fusion is not None
        yield s


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=60_000)  # fail in 1 min, not 3 (default)
        yield b
        b.close()


@pytest.fixture()
def page(svc, browser):
    """A page with the view running (CSP bypassed so tests can read ``window.mmstreamView``)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True, has_touch=True)
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(svc.web.url)
    pg.wait_for_function("[...document.getElementById('stream').options].some(o => o.value === 'sim')", timeout=20000)
    pg.select_option("#stream", "sim")  # not a stopped side stream of an earlier test, first in the list
    pg.wait_for_function("window.mmstreamView.painted > 3 && window.mmstreamView.metrics?.stream_id === 'sim'", timeout=20000)
    yield pg
    ctx.close()
    assert errors == []


def shot(pg, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    pg.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def client_point(pg, row: float, col: float) -> tuple[float, float]:
    """Viewport (x, y) of image pixel (row, col) on the canvas."""
    return pg.evaluate(
        """([r, c]) => { const cv = document.getElementById('view'), b = cv.getBoundingClientRect();
           return [b.left + (c + 0.5) * b.width / cv.width, b.top + (r + 0.5) * b.height / cv.height]; }""",
        [row, col],
    )


def nerve_truth(pg) -> tuple[float, float, float]:
    a = pg.evaluate("window.mmstreamView.metrics.annotations")
    return a["truth_nerve_row"], a["truth_nerve_col"], a["truth_nerve_area_mm2"]


def test_page_loads_under_its_csp_without_errors(svc, browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = ctx.new_page()
    problems = []
    pg.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    pg.goto(svc.web.url)
    playwright.expect(pg.locator("#conn")).to_have_text("connected", timeout=15000)
    playwright.expect(pg.locator("#st-fps")).not_to_have_text("–", timeout=15000)
    assert "?" not in pg.url and problems == []
    ctx.close()


def test_frames_advance_with_the_source_and_display_latency_is_reported(svc, page):
    # the page paints continuously; the paint rate itself is measured by tools/bench_web.py (22-28 fps
    # of a 30 fps source here), the bound below holds on a loaded CI machine too
    n0, seq0, t0 = page.evaluate("[window.mmstreamView.painted, window.mmstreamView.lastPaintedSeq, performance.now()]")
    page.wait_for_timeout(2000)  # a measurement window, not a synchronisation
    n1, seq1, t1 = page.evaluate("[window.mmstreamView.painted, window.mmstreamView.lastPaintedSeq, performance.now()]")
    assert seq1 > seq0 and (n1 - n0) / ((t1 - t0) / 1e3) > 6  # painted per second, source at 30
    page.wait_for_function("document.getElementById('st-display').textContent !== '–'", timeout=10000)
    fps = float(page.locator("#st-fps").text_content())
    assert 20 <= fps <= 40
    display = wait_for(lambda: svc.graph.status()["web"]["display"].get("sim"), what="display latency")
    assert 0 < display["latency_p50_ms"] < 500 and display["fps"] > 6
    shot(page, "live")


def test_click_on_the_nerve_places_the_seed_and_the_contour_appears_there(svc, page):
    page.locator("#clear-seed").click()
    page.wait_for_function("window.mmstreamView.metrics.csa === null", timeout=10000)
    row, col, _ = nerve_truth(page)
    page.mouse.click(*client_point(page, row, col))
    page.wait_for_function("window.mmstreamView.metrics.csa !== null && window.mmstreamView.metrics.contour_rc", timeout=10000)
    seed = svc.graph.settings.get("sim").seed_rc
    # the click landed on that pixel, give or take the nerve's motion (up to ~13 px/s in the sim)
    # between reading its position from the page and the click reaching the service
    assert abs(seed[0] - row) < 4 and abs(seed[1] - col) < 4
    for _ in range(10):  # the next frames keep the contour on the (moving) nerve
        m = page.evaluate("window.mmstreamView.metrics")
        contour, a = np.array(m["contour_rc"]), m["annotations"]
        assert np.hypot(*(contour.mean(axis=0) - (a["truth_nerve_row"], a["truth_nerve_col"]))) < 12
        assert m["csa"]["area_mm2"] == pytest.approx(a["truth_nerve_area_mm2"], rel=0.25)
        seq = m["seq"]
        page.wait_for_function(f"window.mmstreamView.metrics.seq > {seq}", timeout=5000)
    assert "mm²" in page.locator("#csa-unit").text_content() and page.locator("#echo-unit").text_content() == "grey level"
    assert float(page.locator("#csa-value").text_content()) > 5
    shot(page, "seed")


def test_drag_sets_the_roi_and_touch_tap_sets_the_seed(svc, page):
    x0, y0 = client_point(page, 40, 60)
    x1, y1 = client_point(page, 300, 400)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
    page.mouse.move(x1, y1, steps=4)
    page.mouse.up()
    roi = wait_for(lambda: svc.graph.settings.get("sim").roi, what="the ROI from the drag")
    assert np.allclose(roi, (40, 60, 301, 401), atol=3)
    page.wait_for_function("JSON.stringify(window.mmstreamView.metrics.roi) !== 'null'", timeout=10000)
    shot(page, "roi")
    page.locator("#clear-roi").click()
    wait_for(lambda: svc.graph.settings.get("sim").roi is None, what="ROI cleared")
    version = svc.graph.settings.get("sim").seed_version
    row, col, _ = nerve_truth(page)
    page.touchscreen.tap(*client_point(page, row, col))
    wait_for(lambda: svc.graph.settings.get("sim").seed_version > version, what="the seed from a touch tap")
    assert np.allclose(svc.graph.settings.get("sim").seed_rc, (row, col), atol=4)  # as for the click


def line_point(pg, line: str) -> tuple[float, float]:
    """(row, col) of the middle point of the boundary line ``line`` ("superficial" or "deep") now."""
    return tuple(pg.evaluate(f"(l => l[l.length >> 1])(window.mmstreamView.metrics.{line}_rc)"))


def test_tap_modes_set_the_thickness_lines_and_clear_lines_resets_them(svc, page):
    settings = lambda: svc.graph.settings.get("sim")  # noqa: E731
    before = settings()
    assert page.get_by_role("radio", name="CSA seed").is_checked()  # the default
    page.get_by_text("Deep line").click()
    row, col = line_point(page, "deep")
    page.mouse.click(*client_point(page, row, col))
    wait_for(lambda: settings().deep_at_rc, what="the deep line click")
    assert np.allclose(settings().deep_at_rc, (row, col), atol=1) and settings().superficial_at_rc is None
    assert settings().seed_version == before.seed_version and settings().lines_version == before.lines_version + 1
    page.get_by_role("radio", name="Deep line").focus()
    page.keyboard.press("ArrowLeft")  # keyboard: the arrow keys move the choice
    assert page.get_by_role("radio", name="Superficial line").is_checked()
    row, col = line_point(page, "superficial")
    page.touchscreen.tap(*client_point(page, row, col))
    wait_for(lambda: settings().superficial_at_rc, what="the superficial line tap")
    assert np.allclose(settings().superficial_at_rc, (row, col), atol=1) and settings().deep_at_rc is not None
    held = "superficial and deep line held by a tap"  # the thickness card says which lines a tap holds
    wait_for(lambda: held in page.locator("#th-sub").text_content(), what="the card naming the held lines")
    shot(page, "line-clicks")
    page.locator("#clear-lines").click()
    wait_for(lambda: settings().lines_version == before.lines_version + 4, what="both lines cleared")
    assert settings().superficial_at_rc is None and settings().deep_at_rc is None
    wait_for(lambda: "held" not in page.locator("#th-sub").text_content(), what="the card without held lines")
    assert settings().seed_version == before.seed_version and settings().roi == before.roi  # taps never set those


def test_context_capture_and_the_fusion_card(svc, page):
    svc.graph.settings.update("sim", roi=(60, 40, 400, 470))  # a muscle region: the fusion node refuses whole-frame captures
    page.fill("#patient", PATIENT)
    page.fill("#site", "Tibialis anterior")  # as typed: the service keeps the store's form tibialis_anterior
    page.select_option("#side", "left")
    page.fill("#age", "54")
    page.select_option("#sex", "female")
    page.locator("#context button").click()
    wait_for(lambda: svc.graph.settings.get("sim").clinical.site == "tibialis_anterior", what="context set")
    c = svc.graph.settings.get("sim").clinical
    assert c.patient_id == PATIENT and PATIENT not in page.url and (c.age_years, c.sex) == (54.0, "female")
    wait_for(lambda: page.evaluate("window.mmstreamView.clinical.sex") == "female", what="the context back on the page")
    page.select_option("#side", "right")  # Set again, the rest of the form as shown: age and sex are kept
    page.locator("#context button").click()
    wait_for(lambda: svc.graph.settings.get("sim").clinical.side == "right", what="context set again")
    c = svc.graph.settings.get("sim").clinical
    assert (c.age_years, c.sex) == (54.0, "female")  # the page used to send neither, erasing them
    wait_for(lambda: page.evaluate("window.mmstreamView.clinical.side") == "right", what="the right side on the page")
    page.select_option("#side", "left")
    page.locator("#context button").click()
    wait_for(lambda: svc.graph.settings.get("sim").clinical.side == "left", what="back to the left side")
    playwright.expect(page.locator("#capture-count")).to_have_text("0/3", timeout=10000)
    for i in range(1, 4):
        page.locator("#capture").click()
        playwright.expect(page.locator("#capture-count")).to_have_text(f"{i}/3", timeout=10000)
    rows = page.locator("#captures tbody tr")
    playwright.expect(rows).to_have_count(4)  # three captures and their mean
    assert rows.nth(3).locator("td").first.text_content() == "mean"
    fused = page.locator("#fused")
    playwright.expect(fused).to_contain_text("involvement score", timeout=10000)
    playwright.expect(fused.locator("tr", has_text="MRI fat fraction")).to_contain_text("2026-01-10")  # stored
    playwright.expect(fused.locator("tr", has_text="captured")).to_contain_text("US echo intensity")  # three-image value
    playwright.expect(page.locator("#fused li")).to_have_count(len(STORED))
    playwright.expect(page.locator("#fused li.here")).to_contain_text("tibialis anterior left")
    page.set_viewport_size({"width": 1920, "height": 1080})  # a bedside monitor: every card in view
    page.locator("#fused-card").scroll_into_view_if_needed()
    shot(page, "fusion")
    page.set_viewport_size({"width": 1280, "height": 800})


def test_a_context_from_another_page_keeps_what_is_being_typed(svc, browser, page):
    """Another page's Set shows on this page, except in the fields being typed in (the form used to
    be rewritten under the user's fingers); Set then sends the typed field with the other page's
    values in the rest (not the stale ones this page showed before)."""
    before = svc.graph.settings.get("sim").clinical
    other = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True).new_page()
    try:
        other.goto(svc.web.url)
        other.wait_for_function("window.mmstreamView.streamId === 'sim'", timeout=20000)
        page.fill("#site", "Soleus")  # typed, not Set
        other.fill("#patient", "NEXT-PATIENT-99")
        other.fill("#site", "rectus_femoris")
        other.select_option("#side", "right")
        other.locator("#context button").click()
        wait_for(lambda: page.evaluate("window.mmstreamView.clinical.site") == "rectus_femoris", what="the context on this page")
        assert page.input_value("#site") == "Soleus"  # as the user left it
        assert page.input_value("#patient") == "NEXT-PATIENT-99" and page.input_value("#side") == "right"  # not edited: follow
        page.locator("#context button").click()
        wait_for(lambda: svc.graph.settings.get("sim").clinical.site == "soleus", what="this page's Set")
        c = svc.graph.settings.get("sim").clinical
        assert (c.patient_id, c.side) == ("NEXT-PATIENT-99", "right")  # the other page's patient is kept
        playwright.expect(other.locator("#site")).to_have_value("soleus", timeout=10000)  # not edited: follows
        playwright.expect(page.locator("#site")).to_have_value("soleus", timeout=10000)  # the service's form after Set
    finally:
        other.context.close()
        svc.graph.settings.update("sim", clinical=before)


def test_record_button_writes_a_session_file(svc, page):
    from mmstream.recording.reader import SessionReader

    directory = Path(svc.config.recorder.directory)
    page.locator("#record").click()
    playwright.expect(page.locator("#st-rec")).to_contain_text("REC", timeout=10000)
    files = wait_for(lambda: sorted(directory.glob("*.h5")), what="a session file")
    playwright.expect(page.locator("#st-rec")).to_have_attribute("title", files[0].name, timeout=10000)
    playwright.expect(page.locator("#record")).to_have_text("■ Stop")
    shot(page, "recording")
    page.locator("#record").click()
    playwright.expect(page.locator("#st-rec")).to_have_text("not recording", timeout=10000)
    with SessionReader(files[0]) as r:
        assert r.file["streams/sim/index"].shape[0] > 0


@contextlib.contextmanager
def side_stream(svc, page, stream_id: str, image: Callable[[int], np.ndarray]):
    """A second stream of frames ``image(i)`` at 20 fps, shown on the page while the block runs."""
    stop = threading.Event()
    frames = (SourceFrame(image=image(i), t_device_s=i / 20) for i in range(10**6))
    with FrameSender(svc.graph.endpoints["ingest"], stream_id) as sender:
        t = threading.Thread(target=pump, args=(frames, sender), kwargs={"stop": stop}, daemon=True)
        t.start()
        try:
            page.wait_for_function(f"[...document.getElementById('stream').options].some(o => o.value === '{stream_id}')", timeout=15000)
            page.select_option("#stream", stream_id)
            page.wait_for_function(f"window.mmstreamView.meta?.stream_id === '{stream_id}' && window.mmstreamView.metrics?.stream_id === '{stream_id}'", timeout=10000)
            yield
        finally:
            stop.set()
            t.join(5)


def test_a_stopped_stream_is_shown_as_not_live(svc, page):
    """When the source stops, the last image and numbers are greyed and marked NOT LIVE (never
    mistaken for the probe's live image); a live stream shows no such banner; a stream switch
    clears the other stream's image."""
    assert page.locator("#stale").is_hidden()
    rng = np.random.default_rng(5)
    with side_stream(svc, page, "stops", lambda i: rng.integers(0, 255, (128, 160), dtype=np.uint8)):
        assert page.locator("#stale").is_hidden() and page.locator("#th-value").text_content() != "–"
    playwright.expect(page.locator("#stale")).to_contain_text("NOT LIVE: no new image for", timeout=5000)
    assert page.evaluate("document.body.classList.contains('stale')") and page.locator("#st-fps").text_content() == "–"
    shot(page, "not-live")
    page.select_option("#stream", "sim")
    page.wait_for_function("window.mmstreamView.meta?.stream_id === 'sim'", timeout=10000)
    playwright.expect(page.locator("#stale")).to_be_hidden(timeout=5000)
    status = svc.graph.status()["streams"]
    assert status["stops"]["idle_s"] > 1.0 and status["sim"]["idle_s"] < 1.0


def test_stream_without_spacing_shows_pixels_and_says_so(svc, page):
    rng = np.random.default_rng(3)
    with side_stream(svc, page, "nospacing", lambda i: rng.integers(0, 255, (128, 160), dtype=np.uint8)):
        playwright.expect(page.locator("#th-unit")).to_have_text("px", timeout=10000)
        playwright.expect(page.locator("#th-sub")).to_contain_text("spacing unknown")
        playwright.expect(page.locator("#st-spacing")).to_contain_text("spacing unknown")
        shot(page, "no-spacing")


_LIFTED = np.zeros((128, 160), np.uint8)
_LIFTED[:4] = 180  # the lens ring-down
_NO_SIGNAL = np.full((128, 160), 29, np.uint8)  # a video grabber's uniform "no signal" screen
_NO_SIGNAL[60:68, 40:120] = 235  # with its caption


@pytest.mark.parametrize(("name", "image", "warning", "why"), [
    ("lifted", _LIFTED, "No probe contact", "not measured: no probe contact"),
    ("nosignal", _NO_SIGNAL, "No image (featureless frame)", "not measured: featureless frame (no image)"),
])  # fmt: skip
def test_unmeasured_frame_shows_no_measurement_and_says_why(svc, page, name, image, warning, why):
    with side_stream(svc, page, name, lambda i: image):
        playwright.expect(page.locator("#warnings")).to_contain_text(warning, timeout=10000)
        playwright.expect(page.locator("#warnings")).not_to_contain_text("Frozen")  # repeated frames: not frozen
        for card in ("#th-sub", "#csa-sub", "#echo-sub"):
            playwright.expect(page.locator(card)).to_have_text(why)
        for value in ("#th-value", "#csa-value", "#echo-value"):
            playwright.expect(page.locator(value)).to_have_text("–")
        for unit in ("#th-unit", "#csa-unit", "#echo-unit"):  # no unit beside a missing value
            playwright.expect(page.locator(unit)).to_have_text("")
        shot(page, "no-contact" if name == "lifted" else "featureless")


def test_token_from_the_url_fragment_or_the_prompt(browser):
    token = "bedside-token-browser-0123"
    cfg = load_config(None, endpoints=RANDOM_TCP, web={"port": 0, "token": token})
    with Service(cfg) as svc:
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        pg = ctx.new_page()
        pg.goto(svc.web.url + "#token=" + token)  # the fragment never reaches the server
        playwright.expect(pg.locator("#conn")).to_have_text("connected", timeout=15000)
        assert pg.url == svc.web.url  # and the page takes it off the address bar
        ctx.close()
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        pg = ctx.new_page()
        pg.goto(svc.web.url)  # no token: refused, the page asks for it
        playwright.expect(pg.locator("#login")).to_be_visible(timeout=15000)
        playwright.expect(pg.locator("#conn")).to_contain_text("unauthorized")
        shot(pg, "token-prompt")
        pg.fill("#token", token)
        pg.locator("#login-form button").click()
        playwright.expect(pg.locator("#conn")).to_have_text("connected", timeout=15000)
        ctx.close()
        assert svc.graph.status()["web"]["rejected"]["unauthorized"] == 1
