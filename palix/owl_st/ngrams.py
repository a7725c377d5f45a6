"""Detection queries from captions: word n-grams without stop words at their ends (OWL-ST).

OWL-ST needs no class list: every word n-gram of an image's caption (the alt-text) is a query
for that image. Here a caption is lower-cased and split into clauses at punctuation; the
n-grams of each clause (1 to ``max_n`` words) are kept unless they begin or end with a stop
word (``a red triangle`` gives ``red``, ``triangle`` and ``red triangle``, not ``a red``), and
duplicates are dropped (first occurrence kept). The paper uses n-grams up to 10 words on web
alt-text; captions here are short, so the default is 3.
"""

import re
from typing import List

# Function words that never start or end a query (a small English list; nouns never appear).
STOP_WORDS = frozenset("""
a an the and or but nor of in on at to for from by with without into onto over under above
below near next beside between among behind front left right top bottom up down out off
this that these those there here some any each every all both few many more most other such
no not only own same so than too very can will just is are was were be been being has have had
do does did it its it's he she they them their his her we you your our my me i photo picture
image showing shows shown""".split())

_CLAUSES = re.compile(r"[,.;:!?()\[\]{}\"]+")
_WORD = re.compile(r"[a-z0-9][a-z0-9'\-]*")


def caption_ngrams(caption: str, max_n: int = 3, stop_words=STOP_WORDS) -> List[str]:
  """The n-gram queries of ``caption`` (see the module docstring), in caption order."""
  if max_n < 1:
    raise ValueError(f"max_n must be >= 1; got {max_n}")
  found = {}
  for clause in _CLAUSES.split(caption.lower()):
    words = _WORD.findall(clause)
    for n in range(1, max_n + 1):
      for start in range(len(words) - n + 1):
        gram = words[start:start + n]
        if gram[0] in stop_words or gram[-1] in stop_words:
          continue
        found.setdefault(" ".join(gram), None)
  return list(found)
