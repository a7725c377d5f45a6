"""Caption metrics equal a direct pycocoevalcap run (its tokenizer and scorers) on the same data.

The Java steps take seconds, so each pipeline runs once per module; METEOR (a JVM that loads a
paraphrase table) runs once in the fast tests and is compared to a direct run in a slow test.
"""

import os

import pytest

from palix.eval.metrics import JavaNotFoundError, coco_caption_metrics, coco_caption_scores
from palix.eval.metrics.captioning import tokenize

REFERENCES = [
    ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave in the ocean.",
     "a person surfing on a big wave", "Surfer in a wetsuit riding a breaking wave."],
    ["Two dogs play with a frisbee in the grass.", "two dogs running on a lawn",
     "A pair of dogs chasing a frisbee on a field."],
    ["A plate of food with broccoli and rice.", "Rice, broccoli and chicken on a white plate."],
    ["A red double decker bus driving down a street.", "A red bus on a city street.",
     "a double-decker bus in London"],
    ["A cat sleeping on a laptop keyboard.", "A cat lies on top of an open laptop."],
]
PREDICTIONS = [
    "a man riding a wave on a surfboard",
    "two dogs playing with a frisbee on the grass",
    "",  # an empty generation must not break anything
    "A red double-decker bus driving down a city street!",
    "a cat sleeping on a laptop",
]


def _pycocoevalcap_reference(references, predictions, with_meteor):
  """Run pycocoevalcap exactly as COCOEvalCap.evaluate does, minus SPICE."""
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.meteor.meteor import Meteor
  from pycocoevalcap.rouge.rouge import Rouge
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
  tokenizer = PTBTokenizer()
  gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in enumerate(references)})
  res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(predictions)})
  out = {}
  bleu, bleu_images = Bleu(4).compute_score(gts, res, verbose=0)
  for n in range(4):
    out[f"Bleu_{n + 1}"] = (bleu[n], bleu_images[n])
  scorers = [("ROUGE_L", Rouge()), ("CIDEr", Cider())] + ([("METEOR", Meteor())] if with_meteor
                                                           else [])
  for name, scorer in scorers:
    out[name] = scorer.compute_score(gts, res)
  return out


@pytest.fixture(scope="module")
def ours():
  return coco_caption_scores(REFERENCES, PREDICTIONS)  # the one METEOR call of the fast tests


@pytest.fixture(scope="module")
def reference():
  return _pycocoevalcap_reference(REFERENCES, PREDICTIONS, with_meteor=False)


@pytest.mark.parametrize("name", ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"])
def test_equals_direct_pycocoevalcap(ours, reference, name):
  corpus, per_image = reference[name]
  assert ours.corpus[name] == pytest.approx(float(corpus), rel=1e-12, abs=1e-15)
  assert ours.per_image[name] == pytest.approx([float(s) for s in per_image], rel=1e-12,
                                               abs=1e-15)


def test_meteor_present_and_ranked(ours):
  meteor = ours.per_image["METEOR"]
  assert list(ours.corpus) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]
  assert 0 < ours.corpus["METEOR"] < 1 and len(meteor) == len(PREDICTIONS)
  assert meteor[2] == 0.0  # the empty caption matches nothing
  assert min(meteor[i] for i in (0, 1, 3, 4)) > 0.2


def test_scores_are_sane(ours):
  # CIDEr of an empty caption is 0; the near-copies score well above it
  assert ours.per_image["CIDEr"][2] == 0.0
  assert min(ours.per_image["CIDEr"][i] for i in (0, 1, 3, 4)) > 0.5


def test_cider_depends_on_the_evaluated_set(ours):
  # IDF comes from the references of the evaluated images: the same two images scored alone get
  # different per-image CIDEr than inside the five-image set.
  subset = coco_caption_scores(REFERENCES[:2], PREDICTIONS[:2], include_meteor=False)
  assert subset.per_image["CIDEr"] != pytest.approx(ours.per_image["CIDEr"][:2])
  # BLEU and ROUGE-L per image do not depend on the other images
  assert subset.per_image["ROUGE_L"] == pytest.approx(ours.per_image["ROUGE_L"][:2])


def test_line_breaks_inside_a_caption_do_not_shift_captions():
  tokenized = tokenize({0: ["A dog\rruns.", "A\u2028cat"], 1: ["the end"]})
  assert tokenized == {0: ["a dog runs", "a cat"], 1: ["the end"]}


def test_missing_java_is_a_clear_error(monkeypatch, tmp_path):
  monkeypatch.setenv("PATH", str(tmp_path))
  with pytest.raises(JavaNotFoundError, match="need `java` on PATH.*default-jre-headless"):
    coco_caption_metrics([["a cat"]], ["a cat"])


@pytest.mark.parametrize("targets,predictions,message", [
    ([["a"]], ["a", "b"], "1 reference lists but 2 predicted captions"),
    (["a cat"], ["a cat"], "target 0 must be a non-empty list of reference strings"),
    ([[]], ["a cat"], "target 0 must be a non-empty list"),
    ([["a"]], [None], "prediction 0 must be a string"),
])
def test_bad_input(targets, predictions, message):
  with pytest.raises(ValueError, match=message):
    coco_caption_metrics(targets, predictions)


@pytest.mark.slow
def test_meteor_equals_direct_pycocoevalcap(ours):
  corpus, per_image = _pycocoevalcap_reference(REFERENCES, PREDICTIONS, with_meteor=True)["METEOR"]
  assert ours.corpus["METEOR"] == pytest.approx(corpus, rel=1e-12)
  assert ours.per_image["METEOR"] == pytest.approx(per_image, rel=1e-12)


def test_java_is_on_this_machine():
  # The fast tests above need Java; say so plainly if it is missing rather than erroring later.
  assert any(os.access(os.path.join(d, "java"), os.X_OK)
             for d in os.environ.get("PATH", "").split(os.pathsep)), "install a Java runtime"
