"""Caption n-grams: clauses at punctuation, no stop word at either end, first occurrence kept."""

import pytest

from palix.owl_st import ngrams


def test_ngrams_of_a_caption_by_hand():
  caption = "a red triangle, a trouser and an ankle boot"
  assert ngrams.caption_ngrams(caption, max_n=3) == [
      "red", "triangle", "red triangle",  # clause 1 ("a red", "a red triangle" start with 'a')
      "trouser", "ankle", "boot", "ankle boot"]  # "trouser and an" ends, "and ..." starts badly
  assert ngrams.caption_ngrams(caption, max_n=1) == ["red", "triangle", "trouser", "ankle",
                                                     "boot"]


def test_ngrams_keep_hyphens_drop_duplicates_and_case():
  caption = "A T-shirt, a t-shirt and a Blue Circle."
  assert ngrams.caption_ngrams(caption) == ["t-shirt", "blue", "circle", "blue circle"]
  assert ngrams.caption_ngrams("") == [] and ngrams.caption_ngrams("a photo of the") == []
  with pytest.raises(ValueError, match="max_n"):
    ngrams.caption_ngrams("a bag", max_n=0)
