"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) computed by pycocoevalcap itself.

The numbers are those of the COCO caption evaluation server code: captions go through
pycocoevalcap's PTB tokenizer (Stanford CoreNLP, lower-cased, punctuation tokens dropped) and then
its scorers. The tokenizer and METEOR run ``java``; SPICE is not computed (it downloads CoreNLP
models and fails on recent Java).

**CIDEr-D depends on the whole evaluated set**: its IDF weights are document frequencies over the
*references of the images being scored*. Score a split once, all images together; the mean of
per-shard or per-batch CIDEr is a different number, and a subset gives different per-image scores.
BLEU is corpus-level too (clipped n-gram counts summed over images). Scores are fractions as
pycocoevalcap returns them (papers usually print x100).
"""

import contextlib
import dataclasses
import io
import shutil
from typing import Dict, Hashable, List, Sequence

_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})
METRIC_NAMES = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


class JavaNotFoundError(RuntimeError):
  """pycocoevalcap needs a Java runtime for its tokenizer and METEOR."""


def require_java() -> str:
  """Path of ``java``, or a :class:`JavaNotFoundError` saying what to install."""
  java = shutil.which("java")
  if java is None:
    raise JavaNotFoundError(
        "caption metrics need `java` on PATH: pycocoevalcap runs the Stanford PTB tokenizer "
        "(stanford-corenlp-3.4.1.jar) and METEOR (meteor-1.5.jar) with it. Install a Java 8+ "
        "runtime, e.g. `apt-get install default-jre-headless`, and make sure `java -version` "
        "works.")
  return java


@dataclasses.dataclass
class CaptionScores:
  """Corpus scores (``corpus[name]``) and per-image scores (``per_image[name][i]``)."""
  corpus: Dict[str, float]
  per_image: Dict[str, List[float]]


def _check_inputs(targets, predictions):
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} reference lists but {len(predictions)} predicted captions")
  if not targets:
    raise ValueError("caption metrics need at least one image")
  for index, (refs, prediction) in enumerate(zip(targets, predictions)):
    if not isinstance(prediction, str):
      raise ValueError(f"prediction {index} must be a string; got {type(prediction).__name__}")
    if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
      raise ValueError(f"target {index} must be a non-empty list of reference strings; "
                       f"got {refs!r}")


def tokenize(captions: Dict[Hashable, List[str]]) -> Dict[Hashable, List[str]]:
  """pycocoevalcap's PTB tokenization of ``{image: [caption, ...]}``.

  Line-break characters are turned into spaces first: the Java tokenizer keeps one caption per
  line, and a caption spanning two lines would shift every later caption onto the wrong image.
  """
  require_java()
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
  inputs = {key: [{"caption": c.translate(_LINE_BREAKS)} for c in caps]
            for key, caps in captions.items()}
  with contextlib.redirect_stdout(io.StringIO()):
    tokenized = PTBTokenizer().tokenize(inputs)
  counts = {key: len(tokenized.get(key, ())) for key in captions}
  if any(counts[key] != len(caps) for key, caps in captions.items()):
    raise RuntimeError("the PTB tokenizer returned a different number of captions than it was "
                       "given; check `java -version` and the tokenizer's stderr")
  return tokenized


def coco_caption_scores(targets: Sequence[Sequence[str]], predictions: Sequence[str], *,
                        include_meteor: bool = True) -> CaptionScores:
  """Tokenise with the PTB tokenizer and score with pycocoevalcap's scorers.

  Args:
    targets: per image, its reference captions (COCO has about five).
    predictions: per image, one generated caption.
    include_meteor: METEOR starts a JVM that loads a paraphrase table (10+ s); switch it off for
      quick looks.
  """
  _check_inputs(targets, predictions)
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.rouge.rouge import Rouge
  # One JVM start for references and predictions (tokenisation is line by line, so this equals
  # tokenising them separately as COCOEvalCap does).
  captions = {("gt", i): list(refs) for i, refs in enumerate(targets)}
  captions.update({("res", i): [p] for i, p in enumerate(predictions)})
  tokenized = tokenize(captions)
  gts = {i: tokenized[("gt", i)] for i in range(len(targets))}
  res = {i: tokenized[("res", i)] for i in range(len(predictions))}
  corpus, per_image = {}, {}
  with contextlib.redirect_stdout(io.StringIO()):  # BLEU prints its length statistics
    bleu, bleu_per_image = Bleu(4).compute_score(gts, res)
  for n in range(4):
    corpus[f"Bleu_{n + 1}"] = float(bleu[n])
    per_image[f"Bleu_{n + 1}"] = [float(s) for s in bleu_per_image[n]]
  scorers = [("ROUGE_L", Rouge), ("CIDEr", Cider)]
  if include_meteor:
    from pycocoevalcap.meteor.meteor import Meteor
    scorers.insert(0, ("METEOR", Meteor))
  for name, scorer_class in scorers:
    score, scores = scorer_class().compute_score(gts, res)
    corpus[name] = float(score)
    per_image[name] = [float(s) for s in scores]
  order = {name: i for i, name in enumerate(METRIC_NAMES)}
  corpus = dict(sorted(corpus.items(), key=lambda item: order[item[0]]))
  return CaptionScores(corpus=corpus, per_image=per_image)


def coco_caption_metrics(targets: Sequence[Sequence[str]], predictions: Sequence[str], *,
                         include_meteor: bool = True) -> Dict[str, float]:
  """seqio-style metric: ``{"Bleu_1".."Bleu_4", "METEOR", "ROUGE_L", "CIDEr": fraction}``.

  Each element of ``targets`` is one image's list of references; call this once on the whole
  split (CIDEr-D's IDF comes from the evaluated references).
  """
  return coco_caption_scores(targets, predictions, include_meteor=include_meteor).corpus
