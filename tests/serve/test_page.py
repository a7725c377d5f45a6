"""The page of ``palix serve`` in a real headless Chromium (Debian's ``chromium``, driven by
Playwright): pick or drop an image, type a prompt, add a few-shot example, watch the answer
stream in, and find the detected boxes drawn where the answer's location tokens put them."""

import os

import numpy as np
import pytest
from PIL import Image

from palix import loc_tokens
from palix.serve.limits import Limits
from palix.serve.scheduler import Batching

from serving_testing import DETECT_ANSWER, DETECT_PROMPT, random_images, running_server

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]

# Slow (a model trained to detect, a server, a browser: ~20 s of CPU); tests/serve/test_api.py
# checks the same API in make test.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason="needs Debian's chromium (make install, or apt-get install -y chromium)")]

# Records every text the answer shows, to see it grow token by token.
RECORD_ANSWER = """() => {
  window.answerTexts = [];
  new MutationObserver(() => window.answerTexts.push(document.getElementById('answer').textContent))
      .observe(document.getElementById('answer'), {childList: true, characterData: true,
                                                   subtree: true});
}"""

DROP_FILE = """async ([selector, name, bytes]) => {
  const transfer = new DataTransfer();
  transfer.items.add(new File([new Uint8Array(bytes)], name, {type: 'image/png'}));
  document.querySelector(selector).dispatchEvent(
      new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
}"""


@pytest.fixture(scope="module")
def page(detector):
  playwright_api = pytest.importorskip("playwright.sync_api")
  generator, _ = detector
  with running_server(generator, Limits(max_prompt_chars=40), Batching(batch_sizes=(1,))) as url:
    with playwright_api.sync_playwright() as playwright:
      browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
      page = browser.new_page(viewport={"width": 1000, "height": 1200})
      page.goto(url)
      page.wait_for_function("document.getElementById('model-info').textContent.includes('slots')")
      yield page
      browser.close()


def _answer(page, timeout_ms=60_000):
  page.click("#send")
  page.wait_for_function("['done', 'error'].includes(document.body.dataset.phase)",
                         timeout=timeout_ms)
  return page.inner_text("#answer")


def _save_png(pixels, path):
  Image.fromarray(pixels).save(path)
  return str(path)


def test_detection_answer_streams_and_boxes_are_drawn(page, detector, tmp_path):
  generator, image = detector
  page.set_input_files("#image-input", _save_png(image, tmp_path / "query.png"))
  page.wait_for_function("document.getElementById('preview').naturalWidth > 0")
  page.fill("#prompt", DETECT_PROMPT)
  page.evaluate(RECORD_ANSWER)
  assert _answer(page) == DETECT_ANSWER
  assert page.get_attribute("body", "data-phase") == "done"
  # Streamed: the answer grew through several partial texts, each a prefix of the final one.
  shown = [t for t in page.evaluate("window.answerTexts") if t]
  assert len(set(shown)) >= 5 and all(DETECT_ANSWER.startswith(t) for t in shown)

  # The boxes of the answer, from its location tokens (bin k -> k / 1023), in pixels.
  height, width = image.shape[:2]
  expected = {"cat": (100, 200, 500, 600), "dog": (300, 50, 900, 400)}
  rects = page.query_selector_all("#overlay rect")
  assert sorted(r.get_attribute("data-label") for r in rects) == ["cat", "dog"]
  image_box = page.query_selector("#preview").bounding_box()
  for rect in rects:
    ymin, xmin, ymax, xmax = (b / 1023 for b in expected[rect.get_attribute("data-label")])
    attributes = [float(rect.get_attribute(k)) for k in ("x", "y", "width", "height")]
    np.testing.assert_allclose(attributes, [xmin * width, ymin * height,
                                            (xmax - xmin) * width, (ymax - ymin) * height],
                               rtol=1e-6)
    # ... and drawn there on screen over the displayed image: the same centre, and the same size
    # up to the 2 px stroke that the on-screen box includes.
    shown, scale = rect.bounding_box(), image_box["width"] / width
    assert image_box["height"] / height == pytest.approx(scale)
    np.testing.assert_allclose(
        [shown["x"] - image_box["x"] + shown["width"] / 2,
         shown["y"] - image_box["y"] + shown["height"] / 2],
        [(xmin + xmax) / 2 * width * scale, (ymin + ymax) / 2 * height * scale], atol=0.5)
    np.testing.assert_allclose([shown["width"], shown["height"]],
                               [(xmax - xmin) * width * scale, (ymax - ymin) * height * scale],
                               atol=2.5)
  items = page.inner_text("#box-list")
  assert "cat: ymin, xmin, ymax, xmax = 0.098, 0.196, 0.489, 0.587" in items


def test_dropped_image_and_few_shot_example_give_the_generators_answer(page, detector,
                                                                        tmp_path):
  generator, _ = detector
  query, shot = random_images(2, seed=11)
  with open(_save_png(query, tmp_path / "dropped.png"), "rb") as f:
    page.evaluate(DROP_FILE, ["#drop-zone", "dropped.png", list(f.read())])
  page.wait_for_function("document.querySelectorAll('#thumbs img').length === 1")
  page.click("#add-example")
  example = page.query_selector("#examples .example")
  example.query_selector(".example-image").set_input_files(_save_png(shot, tmp_path / "shot.png"))
  page.wait_for_function("document.querySelector('#examples .example').dataset.image")
  example.query_selector(".example-prompt").fill("name en")
  example.query_selector(".example-answer").fill("red")
  page.fill("#prompt", "caption en")
  page.click("#options summary")  # decoding options are folded away by default
  page.fill("#max-new-tokens", "6")
  expected = generator.complete(query, "caption en", [(shot, "name en", "red")],
                                max_decode_len=6)
  assert _answer(page) == expected.text
  boxes = loc_tokens.parse_detections(expected.text)
  assert len(page.query_selector_all("#overlay rect")) == len(boxes)


def test_a_refused_request_shows_the_servers_message_and_the_page_keeps_working(page):
  page.fill("#prompt", "x" * 41)
  page.evaluate("document.querySelectorAll('#examples .remove-example').forEach(b => b.click())")
  _answer(page)
  assert page.get_attribute("body", "data-phase") == "error"
  assert "400" in page.inner_text("#error") and "max_prompt_chars=40" in page.inner_text("#error")
  page.fill("#prompt", "caption en")
  _answer(page)
  assert page.get_attribute("body", "data-phase") == "done" and page.is_hidden("#error")
