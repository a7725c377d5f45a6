"""Prompting a trained PaLI-X model from Python, zero- or few-shot, without TensorFlow.

    generator = Generator.from_checkpoint(["experiments/demo_model.gin"], "runs/demo")
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
import os
from typing import Any, Optional, Sequence, Tuple, Union

import gin
import jax
import numpy as np

from palix import few_shot

ImageLike = Union[str, os.PathLike, np.ndarray, Any]  # a path, an array [H, W, 3], a PIL image


@dataclasses.dataclass(frozen=True)
class Completion:
  """A decoded answer: its text, token ids (EOS excluded) and summed log-probability."""
  text: str
  tokens: Tuple[int, ...]
  logprob: float


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
    import sentencepiece  # pylint: disable=g-import-not-at-top
    from palix.tasks import vocabulary  # pylint: disable=g-import-not-at-top  # seqio only lazily
    self.model = model
    self.params = params
    self.vocabulary_path = vocabulary_path or vocabulary.DEFAULT_MODEL
    self.processor = sentencepiece.SentencePieceProcessor(model_file=self.vocabulary_path)
    if model.config.segment_separator_id is not None:
      separator = self.processor.piece_to_id(few_shot.SEPARATOR)
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
    tokens = self.processor.encode(text) + [self.model.eos_id]
    if len(tokens) > self.model.max_input_len:
      raise ValueError(f"the prompt is {len(tokens)} tokens with EOS ({text!r}); the model takes "
                       f"at most max_input_len={self.model.max_input_len}")
    pixels = np.zeros((1, n, size, size, 3), np.float32)
    for slot, (image, where) in enumerate(all_images):
      pixels[0, slot] = load_image(image, size, where)
    mask = (np.arange(n) < len(all_images)).astype(np.int32)[None]
    padded = np.zeros((1, self.model.max_input_len), np.int32)
    padded[0, :len(tokens)] = tokens
    return {"images": pixels, "image_mask": mask, "encoder_input_tokens": padded}

  # --- decoding -----------------------------------------------------------------------------
  def complete(self, images, prompt: str, examples: Sequence = (), rng=None,
               **decode_kwargs) -> Completion:
    """Decodes the answer; ``decode_kwargs`` go to the model's decoding function."""
    batch = self.encode_prompt(images, prompt, examples)
    tokens, aux = self.model.predict_batch_with_aux(self.params, batch, rng, **decode_kwargs)
    tokens = [int(t) for t in np.asarray(tokens)[0]]
    ended = self.model.eos_id in tokens
    length = tokens.index(self.model.eos_id) if ended else len(tokens)
    logprob = float("nan")
    if "logprobs" in aux:  # the answer's tokens and its EOS
      logprob = float(np.sum(np.asarray(aux["logprobs"])[0][:length + ended]))
    answer = tuple(t for t in tokens[:length] if t != 0)
    return Completion(self.detokenize(answer), answer, logprob)

  def detokenize(self, ids: Sequence[int]) -> str:
    """Text of ``ids``; ids beyond the SentencePiece model (the embedding table is padded to a
    round size, and an untrained model may pick them) show as ``<id:N>``."""
    size = self.processor.get_piece_size()
    text, run = [], []
    for token in list(ids) + [None]:
      if token is not None and token < size:
        run.append(int(token))
        continue
      if run:
        text.append(self.processor.decode(run))
        run = []
      if token is not None:
        text.append(f"<id:{token}>")
    return " ".join(text)

  def generate(self, images, prompt: str, examples: Sequence = (), **decode_kwargs) -> str:
    """The answer text to ``prompt`` about ``images`` given in-context ``examples``."""
    return self.complete(images, prompt, examples, **decode_kwargs).text


@gin.configurable
def load_generator(model=gin.REQUIRED, checkpoint_path: str = gin.REQUIRED,
                   vocabulary_path: Optional[str] = None) -> Generator:
  """A :class:`Generator` for ``model`` with the parameters of ``checkpoint_path`` (bound by
  ``gin/runs/prompt.gin``: ``MODEL`` and ``CHECKPOINT_PATH``)."""
  from palix import partitioning  # pylint: disable=g-import-not-at-top
  from palix.training import infer  # pylint: disable=g-import-not-at-top
  shapes = model.input_shapes(1)
  types = {k: (np.float32 if k == "images" else np.int32) for k in shapes}
  params = infer.load_model_params(model, checkpoint_path, partitioning.Partitioner(), shapes,
                                   types)
  return Generator(model, params, vocabulary_path)
