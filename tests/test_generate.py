"""``palix.generate``: few-shot prompts from Python and from ``palix infer --prompt``."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import sentencepiece

from palix import few_shot
from palix import generate
from palix.models.palix_model import PaliXConfig, PaliXModel
from palix.models.t5 import T5Config
from palix.models.vit import ParallelBlock, ViTConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SP_MODEL = os.path.join(REPO, "tasks", "assets", "palix_sp.model")
IMG, SEP = 16, 1027

# The same model as a gin file, for the CLI (vocab 2048 covers the palix SentencePiece model).
MODEL_GIN = f"""
import palix.models.palix_model
import palix.models.vit
ViTConfig.width = 32
ViTConfig.depth = 1
ViTConfig.mlp_dim = 64
ViTConfig.num_heads = 2
ViTConfig.patch_size = 8
ViTConfig.image_size = {IMG}
ViTConfig.block = %vit.ParallelBlock
T5Config.vocab_size = 2048
T5Config.emb_dim = 32
T5Config.num_heads = 2
T5Config.head_dim = 16
T5Config.mlp_dim = 64
T5Config.num_encoder_layers = 1
T5Config.num_decoder_layers = 1
PaliXConfig.vit = @ViTConfig()
PaliXConfig.t5 = @T5Config()
PaliXConfig.max_images = 4
PaliXConfig.segment_separator_id = {SEP}
PaliXModel.config = @PaliXConfig()
PaliXModel.image_size = {IMG}
PaliXModel.num_images = 4
PaliXModel.max_input_len = 24
PaliXModel.max_target_len = 6
MODEL = @PaliXModel()
"""


def _model(separator=SEP):
  vit = ViTConfig(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=8, image_size=IMG,
                  block=ParallelBlock)
  t5 = T5Config(vocab_size=2048, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                num_encoder_layers=1, num_decoder_layers=1)
  config = PaliXConfig(vit=vit, t5=t5, max_images=4, segment_separator_id=separator)
  return PaliXModel(config, image_size=IMG, num_images=4, max_input_len=24, max_target_len=6)


@pytest.fixture(scope="module")
def generator():
  model = _model()
  params = nn.meta.unbox(model.get_initial_variables(jax.random.PRNGKey(0))["params"])
  return generate.Generator(model, params, SP_MODEL)


def _images(count, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (24 + 8 * i, 20, 3), dtype=np.uint8) for i in range(count)]


def test_prompt_layout(generator):
  shots, query = _images(2), _images(1, seed=1)[0]
  examples = [(shots[0], "shape en", "red"), {"image": shots[1], "prompt": "shape en",
                                             "answer": "blue"}]
  batch = generator.encode_prompt(query, "shape en", examples)
  sp = sentencepiece.SentencePieceProcessor(model_file=SP_MODEL)
  text = few_shot.episode_text([("shape en", "red"), ("shape en", "blue")], "shape en")
  expected = sp.encode(text) + [1]
  tokens = batch["encoder_input_tokens"][0]
  assert tokens[:len(expected)].tolist() == expected and not tokens[len(expected):].any()
  assert (tokens == SEP).sum() == 2
  np.testing.assert_array_equal(batch["image_mask"], [[1, 1, 1, 0]])
  for slot, image in enumerate(shots + [query]):  # examples first, then the query
    np.testing.assert_allclose(batch["images"][0, slot], generate.load_image(image, IMG))
  assert not batch["images"][0, 3].any()


@pytest.mark.parametrize("height,width,size", [
    (24, 20, 16), (64, 64, 32), (128, 128, 32), (28, 28, 32), (37, 90, 24), (7, 5, 16)])
def test_image_resize_matches_the_data_pipeline(height, width, size):
  """The API's preprocessing equals the TF data layer's ``stretch`` resize and value range pixel
  for pixel (down- and upsampling, non-square): well within one 8-bit grey level (2/255)."""
  from palix.tasks import image_ops  # pylint: disable=g-import-not-at-top  # TF: tests only
  image = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), np.uint8)
  expected = image_ops.to_unit_range(image_ops.resize(image, size, "stretch")).numpy()
  np.testing.assert_allclose(generate.load_image(image, size), expected, rtol=0, atol=1e-4)


def test_complete_equals_decoding_the_batch(generator):
  shots, query = _images(3), _images(1, seed=2)[0]
  examples = [(img, "shape en", word) for img, word in zip(shots, ("red", "blue", "green"))]
  completion = generator.complete(query, "shape en", examples, eos_id=-1)
  tokens, aux = generator.model.predict_batch_with_aux(
      generator.params, generator.encode_prompt(query, "shape en", examples), eos_id=-1)
  row = [int(t) for t in np.asarray(tokens)[0]]
  length = next((i for i, t in enumerate(row) if t in (0, 1)), len(row))  # the answer's end
  assert list(completion.tokens) == row[:length]
  assert completion.text == generator.detokenize(row[:length])
  emitted = length + (length < len(row) and row[length] == 1)  # EOS counts in the score
  np.testing.assert_allclose(completion.logprob, np.asarray(aux["logprobs"])[0][:emitted].sum(),
                             rtol=1e-5)


@pytest.mark.parametrize("row,answer,truncated,emitted", [
    ([5, 6, 7], (5, 6, 7), True, 3),  # no EOS within the decoding length: may be cut short
    ([5, 1, 0], (5,), False, 2),      # EOS emitted: counted in the log-probability
    ([5, 0, 0], (5,), False, 1),      # padding ends an answer too (decoders write it after EOS)
])
def test_answers_end_by_the_tokenizers_rule_and_flag_truncation(generator, monkeypatch, caplog,
                                                                 row, answer, truncated, emitted):
  logprobs = np.array([[-0.5, -0.25, -0.125]], np.float32)
  monkeypatch.setattr(generator.model, "predict_batch_with_aux",
                      lambda *args, **kwargs: (np.array([row], np.int32), {"logprobs": logprobs}))
  completion = generator.complete(_images(1)[0], "shape en")
  assert completion.tokens == answer and completion.truncated == truncated
  assert completion.logprob == pytest.approx(logprobs[0, :emitted].sum())
  warned = [r.getMessage() for r in caplog.records if "may be cut short" in r.getMessage()]
  assert bool(warned) == truncated


@pytest.mark.parametrize("call,message", [
    (lambda g: g.encode_prompt(_images(1)[0], "shape en", [(_images(1)[0], "p", "a")] * 4),
     "num_images=4"),
    (lambda g: g.encode_prompt(_images(1)[0], "shape en " * 20), "max_input_len=24"),
    (lambda g: g.encode_prompt(_images(1)[0], "shape en", [("x.png", "p")]),
     "examples[0] must be"),
    (lambda g: g.encode_prompt(_images(1)[0], "shape en", [{"image": "x.png", "prompt": "p"}]),
     "missing ['answer']"),
    (lambda g: g.encode_prompt(np.zeros((8, 8)), "shape en"), "[height, width, 3]"),
    (lambda g: g.encode_prompt("/nonexistent.png", "shape en"), "/nonexistent.png"),
])
def test_bad_prompts_say_what_is_wrong(generator, call, message):
  with pytest.raises(ValueError, match=None) as info:
    call(generator)
  assert message in str(info.value)


def test_examples_need_an_interleaving_model():
  model = _model(separator=None)
  params = nn.meta.unbox(model.get_initial_variables(jax.random.PRNGKey(0))["params"])
  with pytest.raises(ValueError, match="segment_separator_id"):
    generate.Generator(model, params, SP_MODEL).encode_prompt(
        _images(1)[0], "shape en", [(_images(1)[0], "shape en", "red")])


def test_cli_answers_a_few_shot_prompt_like_the_api(generator, tmp_path):
  """``palix infer --prompt`` on a params-only checkpoint gives the API's answer."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "ckpt", {"params": generator.params})
  checkpointer.wait_until_finished()
  (tmp_path / "model.gin").write_text(MODEL_GIN)
  images = _images(3, seed=5)
  for i, image in enumerate(images):
    Image.fromarray(image).save(tmp_path / f"{i}.png")
  with open(tmp_path / "examples.jsonl", "w") as f:
    for i, word in enumerate(("red", "blue")):
      f.write(json.dumps({"image": f"{i}.png", "prompt": "shape en", "answer": word}) + "\n")
  result = subprocess.run(
      [sys.executable, "-m", "palix.cli.main", "infer", "--gin_file=runs/prompt.gin",
       f"--gin_file={tmp_path / 'model.gin'}", f"--gin.CHECKPOINT_PATH='{tmp_path / 'ckpt'}'",
       "--prompt=shape en", f"--image={tmp_path / '2.png'}",
       f"--examples={tmp_path / 'examples.jsonl'}"],
      capture_output=True, text=True, cwd=REPO, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  answer = json.loads(result.stdout.strip().splitlines()[-1])
  examples = [(str(tmp_path / f"{i}.png"), "shape en", w) for i, w in enumerate(("red", "blue"))]
  expected = generator.complete(str(tmp_path / "2.png"), "shape en", examples)
  assert answer["answer"] == expected.text and answer["tokens"] == list(expected.tokens)
  assert answer["num_examples"] == 2
  # A bad examples file names the file and line.
  (tmp_path / "bad.jsonl").write_text('{"image": "0.png", "prompt": "shape en"}\n')
  bad = subprocess.run(
      [sys.executable, "-m", "palix.cli.main", "infer", "--gin_file=runs/prompt.gin",
       f"--gin_file={tmp_path / 'model.gin'}", f"--gin.CHECKPOINT_PATH='{tmp_path / 'ckpt'}'",
       "--prompt=shape en", f"--image={tmp_path / '2.png'}", f"--examples={tmp_path / 'bad.jsonl'}"],
      capture_output=True, text=True, cwd=REPO, check=False)
  assert bad.returncode != 0 and "bad.jsonl:1" in bad.stderr


def test_detokenize_is_the_tokenizers_rule(generator):
  ids = generator.tokenizer.encode("a red circle")
  size = generator.tokenizer.vocab_size
  assert generator.detokenize(ids) == "a red circle"
  assert generator.detokenize(ids + [1] + ids) == "a red circle"  # the answer ends at EOS
  # Ids past the vocabulary decode as <unk>, as in the evaluator and seqio.
  assert generator.detokenize(ids + [size + 5] + ids) == generator.detokenize(ids + [2] + ids)
