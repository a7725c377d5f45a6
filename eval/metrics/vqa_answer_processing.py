"""Answer normalisation of the official VQA evaluation (GT-Vision-Lab/VQA ``vqaEval.py``, a013f00).

The official tool keeps several quirks and so do we, because VQAv2 numbers are only comparable
when computed the same way:

* Each punctuation mark in ``PUNCTUATION`` is *deleted* when it touches a space in the original
  answer (``"p "`` or ``" p"``) **or** when the answer contains a digit-comma-digit anywhere;
  otherwise it is *replaced by a space*. The checks look at the original text, not at the text
  being rewritten.
* Periods not followed by a digit are deleted (the official regex ``(?!<=\\d)(\\.)(?!\\d)`` has a
  typo'd look-behind that never fires), and ``re.UNICODE`` (= 32) is passed where ``count`` goes,
  so **at most 32 periods** are removed. ``:``, ``'`` and ``.`` followed by a digit survive.
* Number words ``none``/``zero``..``ten`` become digits, articles ``a an the`` are dropped, then
  apostrophe-less contractions are restored (``dont`` -> ``don't``). The table's capitalised keys
  (``Im``, ``Ive``, ``Id've``, ``I'dve``) can never match because words are lower-cased first, and
  ``somebody'd`` maps to ``somebodyd`` (sic). The table below is the official one, verbatim.
"""

import re

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
               "@", "`", ",", "?", "!")
# The official code passes re.UNICODE (== 32) as `count` to `sub`; this is the effective limit.
MAX_PERIODS_REMOVED = 32

_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})

# key -> replacement, exactly as in the official table (including its unreachable capitalised keys
# and the reversed ``somebody'd`` entry).
CONTRACTIONS = dict(pair.split("=") for pair in """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd
itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's
someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll
someones=someone's somethingd=something'd somethingd've=something'd've
something'dve=something'd've somethingll=something'll thats=that's thered=there'd
thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas
wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll
whatre=what're whats=what's whatve=what've whens=when's whered=where'd wheres=where's
whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's
whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
you'dve=you'd've youll=you'll youre=you're youve=you've
""".split())


def clean_whitespace(answer: str) -> str:
  """Step applied to every answer and prediction: newlines/tabs -> spaces, then ``strip()``."""
  return answer.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
  """The official ``processPunctuation`` (see the module docstring for its quirks)."""
  delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
  out = text
  for mark in PUNCTUATION:
    touches_space = (mark + " ") in text or (" " + mark) in text
    out = out.replace(mark, "" if (touches_space or delete_all) else " ")
  return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=MAX_PERIODS_REMOVED)


def process_digit_article(text: str) -> str:
  """The official ``processDigitArticle``: lower-case, number words -> digits, drop articles,
  restore contractions, join with single spaces."""
  words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
  words = [word for word in words if word not in ARTICLES]
  return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(answer: str) -> str:
  """Full official normalisation (punctuation, then digits/articles/contractions).

  The official evaluation applies it only to questions whose human answers disagree; use
  :func:`palix.eval.metrics.vqa.vqa_answer_accuracy` for the complete rule.
  """
  return process_digit_article(process_punctuation(answer))
