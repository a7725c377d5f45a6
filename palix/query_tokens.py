"""Free-text detection queries -> token rows (SentencePiece ids + EOS, 0-padded), with checks.

The open-vocabulary detector (``palix.models.owl``) embeds every query with its text tower; the
data layer, the evaluator, the OWL-ST pseudo-labeller and the ``Detector`` API all turn query
strings into the same ``[num_queries, max_len]`` rows here, with palix's one SentencePiece
wrapper (``palix.tokenizer``; the committed palix model unless another is given). Bad input is an
error that says which query and why: an empty list, more queries than the model takes, an empty
query, or a query longer than ``max_len`` tokens with its EOS (never cut).
"""

from typing import Optional, Sequence

import numpy as np

from palix import tokenizer as tokenizer_lib


class QueryTokenizer:
  """Args: max_len: tokens per query with EOS; vocabulary_path: SentencePiece model file."""

  def __init__(self, max_len: int, vocabulary_path: Optional[str] = None):
    self.max_len = int(max_len)
    self.tokenizer = tokenizer_lib.get_tokenizer(vocabulary_path)
    self._cache = {}

  def ids(self, query: str, where: str = "query") -> np.ndarray:
    """One query's ids with EOS (``[n]``, ``n <= max_len``)."""
    if not isinstance(query, str) or not query.strip():
      raise ValueError(f"{where}: a query must be non-empty text; got {query!r}")
    text = " ".join(query.split())
    if text not in self._cache:
      self._cache[text] = np.array(self.tokenizer.encode(text) + [tokenizer_lib.EOS_ID],
                                   np.int32)
    ids = self._cache[text]
    if len(ids) > self.max_len:
      raise ValueError(f"{where} {query!r} is {len(ids)} tokens with EOS; queries may have at "
                       f"most {self.max_len} (the model's max_query_len)")
    return ids

  def encode(self, queries: Sequence[str], max_queries: Optional[int] = None,
             pad_to: Optional[int] = None, where: str = "queries") -> np.ndarray:
    """``[len(queries) or pad_to, max_len]`` int32 rows; padding rows are all zero."""
    if isinstance(queries, str):
      raise ValueError(f"{where} must be a list of texts, not one string ({queries!r})")
    queries = list(queries)
    if not queries:
      raise ValueError(f"{where}: the query list is empty; give at least one text query")
    if max_queries is not None and len(queries) > max_queries:
      raise ValueError(f"{where}: {len(queries)} queries, but the model takes at most "
                       f"{max_queries} per image (max_queries)")
    rows = max(len(queries), pad_to or 0)
    out = np.zeros((rows, self.max_len), np.int32)
    for k, query in enumerate(queries):
      ids = self.ids(query, f"{where}[{k}]")
      out[k, :len(ids)] = ids
    return out
