"""The text of a few-shot episode: solved examples, then the query, joined by ``<sep>``.

A k-shot episode has k+1 images, ``[shot_1, ..., shot_k, query]``, and the encoder text::

  {prompt_1} {answer_1} <sep> {prompt_2} {answer_2} <sep> ... {query_prompt}

The PaLI-X model cuts the text at ``<sep>`` (id 1027 of the palix vocabulary,
``palix.tasks.vocabulary.SEPARATOR_ID``) and places segment j right after image j, so each shot's
prompt and answer follow its own image and the query prompt follows the query image. The target is
the query's answer. ``palix.tasks.sources.episodes`` builds the same text in TensorFlow (tested
equal). This module imports neither TensorFlow nor seqio.
"""

from typing import Sequence, Tuple

SEPARATOR = "<sep>"
JOINER = f" {SEPARATOR} "


def episode_text(examples: Sequence[Tuple[str, str]], query_prompt: str) -> str:
  """The encoder text of an episode of ``(prompt, answer)`` shots and a query prompt.

  Raises:
    ValueError: an empty query prompt, an empty shot prompt or answer, or any of them containing
      ``<sep>`` (it would cut the text into the wrong number of segments).
  """
  if not query_prompt.strip():
    raise ValueError("episode_text: empty query prompt")
  if SEPARATOR in query_prompt:
    raise ValueError(f"episode_text: the query prompt {query_prompt!r} contains {SEPARATOR}")
  parts = []
  for number, example in enumerate(examples, start=1):
    if len(example) != 2:
      raise ValueError(f"episode_text: shot {number} must be a (prompt, answer) pair; got "
                       f"{example!r}")
    for what, text in zip(("prompt", "answer"), example):
      if not text.strip():
        raise ValueError(f"episode_text: shot {number} has an empty {what}")
      if SEPARATOR in text:
        raise ValueError(f"episode_text: shot {number}'s {what} {text!r} contains {SEPARATOR}")
    parts.append(f"{example[0]} {example[1]}")
  return JOINER.join(parts + [query_prompt])
