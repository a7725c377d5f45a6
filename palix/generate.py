"""Prompting a trained PaLI-X model from Python, zero- or few-shot, without TensorFlow.

    generator = Generator.from_checkpoint(["experiments/demo_model.gin"], "out/demo")
    generator.generate("query.png", "name en",
                       examples=[("a.png", "name en", "red"), ("b.png", "name en", "blue")])

A k-shot prompt is k examples (image, prompt, answer) and the query (one image or several, e.g.
video frames, and a prompt). The encoder sees ``img_1 prompt_1 answer_1 <sep> ... img_k ...
<sep> query_images query_prompt`` (the model interleaves them: ``PaliXConfig.segment_separator_id``;
the text format is :func:`palix.few_shot.episode_text`, shared with the episodic training tasks) and
the decoder writes the answer. Images are resized like the data pipeline's ``stretch`` mode
(bilinear, antialiased) and scaled to [-1, 1].
"""

import dataclasses
import logging
import os
from typing import Any, Optional, Sequence, Tuple, Union

import gin
import jax
import numpy as np

from palix import few_shot
from palix import partitioning
from palix import tokenizer as tokenizer_lib
from palix.models import base as model_base
from palix.training import checkpoints  # gin-configurable: imported before gin locks its config

logger = logging.getLogger(__name__)

ImageLike = Union[str, os.PathLike, np.ndarray, Any]  # a path, an array [H, W, 3], a PIL image


@dataclasses.dataclass(frozen=True)
class Completion:
  """A decoded answer: its text, token ids (EOS excluded), summed log-probability (EOS included
  when emitted) and whether it filled the decoding length without EOS (it may be cut short)."""
  text: str
  tokens: Tuple[int, ...]
  logprob: float
  truncated: bool = False


def load_image(image: ImageLike, size: int, where: str = "image") -> np.ndarray:
  """A path, PIL image or ``[H, W, 3]`` array (uint8 0..255, or float in [0, 255]) -> float32
  ``[size, size, 3]`` in [-1, 1]."""
  if isinstance(image, (str, os.PathLike)):
    from palix.tasks import media_io  # pylint: disable=g-import-not-at-top  # Pillow only
    pixels = media_io.read_image(os.fspath(image))
  elif hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
    pixels = np.asarray(image.convert("RGB"))
  else:
    pixels = np.asarray(image)
  if pixels.ndim != 3 or pixels.shape[-1] != 3:
    raise ValueError(f"{where}: expected an RGB image [height, width, 3]; got shape "
                     f"{pixels.shape}")
  resized = jax.image.resize(pixels.astype(np.float32), (size, size, 3), method="bilinear",
                             antialias=True)
  return np.clip(np.asarray(resized), 0.0, 255.0) / 127.5 - 1.0


def _as_example(example, index: int) -> Tuple[ImageLike, str, str]:
  if isinstance(example, dict):
    missing = [k for k in ("image", "prompt", "answer") if k not in example]
    if missing:
      raise ValueError(f"examples[{index}] is missing {missing}; it has {sorted(example)}")
    return example["image"], example["prompt"], example["answer"]
  if len(example) != 3:
    raise ValueError(f"examples[{index}] must be (image, prompt, answer); got {len(example)} items")
  return tuple(example)


class Generator:
  """Answers prompts with a ``PaliXModel`` and its parameters (see the module docstring).

  Args:
    model: a ``palix.models.palix_model.PaliXModel``; its ``num_images``, ``max_input_len`` and
      ``image_size`` bound a prompt (k examples + query images <= num_images).
    params: the model's parameters.
    vocabulary_path: SentencePiece model of the training data (default: the committed palix one).
  """

  def __init__(self, model, params, vocabulary_path: Optional[str] = None):
    self.model = model
    self.params = params
    self.tokenizer = tokenizer_lib.get_tokenizer(vocabulary_path)
    self.vocabulary_path = self.tokenizer.model_path
    if model.config.segment_separator_id is not None:
      separator = self.tokenizer.piece_to_id(few_shot.SEPARATOR)
      if separator != model.config.segment_separator_id:
        raise ValueError(f"{self.vocabulary_path} encodes {few_shot.SEPARATOR} as {separator} but "
                         f"the model's segment_separator_id is "
                         f"{model.config.segment_separator_id}")

  @classmethod
  def from_checkpoint(cls, gin_files: Sequence[str], checkpoint_path: str,
                      gin_bindings: Sequence[str] = ()):
    """Parses the model's gin files (they bind ``MODEL``, e.g. ``experiments/demo_model.gin``)
    with ``runs/prompt.gin`` and loads ``checkpoint_path`` (training or params-only)."""
    from palix import config as palix_config  # pylint: disable=g-import-not-at-top
    palix_config.parse_gin(["runs/prompt.gin", *gin_files],
                           [*gin_bindings, f"CHECKPOINT_PATH = {checkpoint_path!r}"],
                           finalize=False)
    return load_generator()

  # --- building the batch -------------------------------------------------------------------
  def encode_prompt(self, images: Union[ImageLike, Sequence[ImageLike]], prompt: str,
                    examples: Sequence = ()) -> dict:
    """The model inputs of one prompt (batch of 1), validated against the model's geometry."""
    examples = [_as_example(e, i) for i, e in enumerate(examples)]
    query_images = list(images) if isinstance(images, (list, tuple)) else [images]
    if not query_images:
      raise ValueError("the query needs at least one image")
    all_images = [(img, f"examples[{i}].image") for i, (img, _, _) in enumerate(examples)]
    all_images += [(img, f"images[{i}]") for i, img in enumerate(query_images)]
    n, size = self.model.num_images, self.model.image_size
    if len(all_images) > n:
      raise ValueError(f"{len(examples)} examples + {len(query_images)} query images need "
                       f"{len(all_images)} image slots; the model has num_images={n}")
    if examples and self.model.config.segment_separator_id is None:
      raise ValueError("this model does not interleave prompts (PaliXConfig.segment_separator_id "
                       "is None), so it cannot take in-context examples")
    text = few_shot.episode_text([(p, a) for _, p, a in examples], prompt)
    tokens = self.tokenizer.encode(text) + [self.model.eos_id]
    if len(tokens) > self.model.max_input_len:
      raise ValueError(f"the prompt is {len(tokens)} tokens with EOS ({text!r}); the model takes "
                       f"at most max_input_len={self.model.max_input_len}")
    batch = {k: np.zeros(shape, model_base.MODEL_FEATURES[k].dtype)
             for k, shape in self.model.input_shapes(1).items() if k in model_base.INPUT_KEYS}
    for slot, (image, where) in enumerate(all_images):
      batch["images"][0, slot] = load_image(image, size, where)
    batch["image_mask"][0, :len(all_images)] = 1
    batch["encoder_input_tokens"][0, :len(tokens)] = tokens
    return batch

  # --- decoding -----------------------------------------------------------------------------
  def complete(self, images, prompt: str, examples: Sequence = (), rng=None,
               **decode_kwargs) -> Completion:
    """Decodes the answer; ``decode_kwargs`` go to the model's decoding function."""
    batch = self.encode_prompt(images, prompt, examples)
    tokens, aux = self.model.predict_batch_with_aux(self.params, batch, rng, **decode_kwargs)
    row = np.asarray(tokens)[0]
    answer = tuple(tokenizer_lib.answer_ids(row, self.model.eos_id))
    logprob = float("nan")
    if "logprobs" in aux:  # the answer's tokens and its EOS
      emitted = len(answer) + tokenizer_lib.ends_with_eos(row, self.model.eos_id)
      logprob = float(np.sum(np.asarray(aux["logprobs"])[0][:emitted]))
    truncated = tokenizer_lib.is_truncated(row, self.model.eos_id)
    if truncated:
      logger.warning("the answer to %r filled all %d decoding steps without EOS and may be cut "
                     "short; allow more (max_new_tokens=...)", prompt, len(row))
    return Completion(self.detokenize(answer), answer, logprob, truncated)

  @property
  def processor(self) -> tokenizer_lib.Tokenizer:
    """The tokenizer, under the name of the ``sentencepiece`` processor it replaced."""
    return self.tokenizer

  def detokenize(self, ids: Sequence[int]) -> str:
    """Text of an answer's ``ids`` (``palix.tokenizer``: up to EOS; ids past the vocabulary
    decode as ``<unk>``)."""
    return self.tokenizer.to_str(ids)

  def generate(self, images, prompt: str, examples: Sequence = (), **decode_kwargs) -> str:
    """The answer text to ``prompt`` about ``images`` given in-context ``examples``."""
    return self.complete(images, prompt, examples, **decode_kwargs).text


@gin.configurable
def load_generator(model=gin.REQUIRED, checkpoint_path: str = gin.REQUIRED,
                   vocabulary_path: Optional[str] = None) -> Generator:
  """A :class:`Generator` for ``model`` with the parameters of ``checkpoint_path`` (bound by
  ``gin/runs/prompt.gin``: ``MODEL`` and ``CHECKPOINT_PATH``)."""
  shapes = model.input_shapes(1)
  params = checkpoints.load_model_params(model, checkpoint_path, partitioning.Partitioner(),
                                         shapes, model_base.batch_dtypes(list(shapes)))
  return Generator(model, params, vocabulary_path)
