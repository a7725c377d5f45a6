"""Packed PaLI-X batches: every example gets, packed with others, what it gets alone.

Examples with images of different sizes and aspect ratios, several images per example (an
interleaved 2-shot prompt), a video clip (frames in one ViT sequence with a time embedding) and
text only, packed two and three per row (``palix.tasks.packed_examples``). Losses (per example),
scores and greedy outputs equal those of each example packed alone (fp32, 1e-5), and for square
images those of the one-example-per-row path that evaluation uses.
"""

import flax.linen as nn
import jax
import numpy as np
import pytest

from palix.layers.time_position import SinCosTimePosEmb
from palix.models import packed_batch
from palix.models.palix_model import PaliXConfig, PaliXModel
from palix.models.t5 import T5Config
from palix.models.vit import ParallelBlock, SinCos2DPosEmb, ViTConfig
from palix.tasks import packed_examples as pe

P, VOCAB, SEP, LD = 8, 48, 7, 6
ROWS = pe.PackedRows(vit_length=40, vit_slots=6, input_length=64, target_length=16,
                     examples_per_row=3, patch_size=P)


def _config():
  vit = ViTConfig(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=P, image_size=16,
                  block=ParallelBlock, qk_norm=True, qkv_bias=False, norm_bias=False,
                  posemb=SinCos2DPosEmb)
  t5 = T5Config(vocab_size=VOCAB, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                num_encoder_layers=2, num_decoder_layers=2)
  return PaliXConfig(vit=vit, t5=t5, max_images=4, segment_separator_id=SEP,
                     time_posemb=SinCosTimePosEmb)


def _image(rng, height, width):
  """Pixels ``[h, w, 3]`` and their patch sequence (numpy patchify: row-major, (py, px, c))."""
  pixels = rng.uniform(-1, 1, (height, width, 3)).astype(np.float32)
  gh, gw = height // P, width // P
  patches = pixels.reshape(gh, P, gw, P, 3).transpose(0, 2, 1, 3, 4).reshape(gh * gw, -1)
  ys, xs = np.divmod(np.arange(gh * gw), gw)
  return pixels, pe.ImageTokens(patches, ys.astype(np.int32), xs.astype(np.int32), (gh, gw))


def _text(rng, *lengths):
  """Random tokens, segments ending in SEP and the last in EOS (1)."""
  out = []
  for j, n in enumerate(lengths):
    out += list(rng.integers(SEP + 1, VOCAB, n - 1)) + [SEP if j < len(lengths) - 1 else 1]
  return np.array(out, np.int32)


def _examples():
  rng = np.random.default_rng(0)
  square, square_tokens = _image(rng, 16, 16)
  _, wide = _image(rng, 8, 24)
  _, tall = _image(rng, 24, 8)
  shots = [_image(rng, 16, 8)[1], _image(rng, 8, 16)[1], _image(rng, 16, 16)[1]]
  frames = [_image(rng, 16, 16) for _ in range(3)]
  examples = {
      "square": pe.PackedExample((square_tokens,), _text(rng, 5), _text(rng, 4), task_id=0),
      "wide": pe.PackedExample((wide,), _text(rng, 6), _text(rng, 3), task_id=1),
      "tall": pe.PackedExample((tall,), _text(rng, 3), _text(rng, 5), task_id=1),
      "two_shot": pe.PackedExample(tuple(shots), _text(rng, 3, 4, 3), _text(rng, 2), task_id=2),
      "video": pe.PackedExample(tuple(f[1] for f in frames), _text(rng, 4), _text(rng, 3),
                                task_id=3, clip=True),
      "text_only": pe.PackedExample((), _text(rng, 7), _text(rng, 4), task_id=0),
  }
  pixels = {"square": square[None], "video": np.stack([f[0] for f in frames])}
  return examples, pixels


PACKING = [["square", "two_shot"], ["wide", "video", "tall"]]
LAYOUT = [(r, s, name) for r, row in enumerate(PACKING) for s, name in enumerate(row)]


@pytest.fixture(scope="module")
def setup():
  model = PaliXModel(_config(), image_size=16, num_images=3, max_input_len=16,
                     max_target_len=LD)
  params = nn.meta.unbox(model.get_initial_variables(jax.random.PRNGKey(0))["params"])
  examples, pixels = _examples()
  packed = pe.pack_rows([[examples[n] for n in row] for row in PACKING], ROWS, SEP)
  alone = {name: pe.pack_rows([[ex], []], ROWS, SEP) for name, ex in examples.items()}
  return model, params, examples, pixels, packed, alone


def test_layout_puts_every_token_where_the_arrays_say(setup):
  """Independent of the model: each example's visual tokens in the encoder row are its patches
  (through encoder_visual_index), its prompt tokens follow the interleaving rule, and segments,
  positions and shifted targets are per example."""
  _, _, examples, _, packed, _ = setup
  two_shot = examples["two_shot"]
  seg = packed["encoder_segment_ids"][0] == 2
  index = packed["encoder_visual_index"][0][seg]
  tokens = packed["encoder_input_tokens"][0][seg]
  # img_0 (2 tokens) text_0 (3) img_1 (2) text_1 (4) img_2 (4) text_2 (3)
  kinds = "".join("v" if i >= 0 else "t" for i in index)
  assert kinds == "vv" + "ttt" + "vv" + "tttt" + "vvvv" + "ttt"
  np.testing.assert_array_equal(tokens[index < 0], two_shot.inputs)
  gathered = packed["patches"][0][index[index >= 0]]
  np.testing.assert_array_equal(gathered, np.concatenate([i.patches for i in two_shot.images]))
  assert packed["encoder_positions"][0][seg].tolist() == list(range(seg.sum()))
  video = packed["image_ids"][1] == packed["image_ids"][1][packed["ts"][1] == 2][0]
  assert video.sum() == 12 and sorted(set(packed["ts"][1][video])) == [0, 1, 2]  # one segment
  d = packed["decoder_segment_ids"][1] == 3
  np.testing.assert_array_equal(packed["decoder_target_tokens"][1][d], examples["tall"].targets)
  assert packed["decoder_input_tokens"][1][d].tolist() == [0] + examples["tall"].targets[:-1].tolist()
  assert packed["example_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
  assert packed["task_ids"].tolist() == [[0, 2, 0], [1, 3, 1]]


def test_losses_and_scores_equal_each_example_alone(setup):
  model, params, _, _, packed, alone = setup
  loss_fn = jax.jit(lambda p, b: model.loss_fn(p, b, None)[1])
  score_fn = jax.jit(model.score_batch)
  together, scores = loss_fn(params, packed), np.asarray(score_fn(params, packed))
  for r, s, name in LAYOUT:
    single = loss_fn(params, alone[name])
    for key in ("per_example/loss", "per_example/tokens", "per_example/correct"):
      np.testing.assert_allclose(together[key][r, s], single[key][0, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores[r, s], np.asarray(score_fn(params, alone[name]))[0, 0],
                               rtol=1e-5, atol=1e-5)
  assert np.all(scores[0, 2] == 0)  # the empty slot scores nothing
  # The batch loss is the token mean over all examples.
  per_example = together["per_example/loss"]
  np.testing.assert_allclose(together["cross_ent_loss"],
                             per_example.sum() / together["per_example/tokens"].sum(), rtol=1e-5)


def test_greedy_outputs_equal_each_example_alone(setup):
  model, params, _, _, packed, alone = setup
  tokens, aux = model.predict_batch_with_aux(params, packed, eos_id=-1, max_decode_len=LD)
  assert tokens.shape == (2, 3, LD)
  for r, s, name in LAYOUT:
    single, single_aux = model.predict_batch_with_aux(params, alone[name], eos_id=-1,
                                                      max_decode_len=LD)
    np.testing.assert_array_equal(tokens[r, s], single[0, 0])
    np.testing.assert_allclose(aux["logprobs"][r, s], single_aux["logprobs"][0, 0], atol=1e-5)


def test_square_examples_match_the_one_example_per_row_path(setup):
  """What evaluation computes (square images, ``image_mask`` 2 for video frames) equals packed
  training on the same pixels."""
  model, params, examples, pixels, _, alone = setup
  for name, mask in (("square", [1, 0, 0]), ("video", [1, 2, 2])):
    ex = examples[name]
    images = np.zeros((1, 3, 16, 16, 3), np.float32)
    images[0, :len(pixels[name])] = pixels[name]
    tokens = np.zeros((1, 16), np.int32)
    tokens[0, :len(ex.inputs)] = ex.inputs
    targets = np.zeros((1, LD), np.int32)
    targets[0, :len(ex.targets)] = ex.targets
    batch = dict(images=images, image_mask=np.array([mask], np.int32),
                 encoder_input_tokens=tokens, decoder_target_tokens=targets,
                 decoder_input_tokens=np.concatenate([[[0]], targets[:, :-1]], 1).astype(np.int32),
                 decoder_loss_weights=(targets > 0).astype(np.float32),
                 task_ids=np.zeros((1,), np.int32))
    unpacked = model.loss_fn(params, batch, None)[1]
    packed = model.loss_fn(params, alone[name], None)[1]
    np.testing.assert_allclose(unpacked["per_example/loss"][0], packed["per_example/loss"][0, 0],
                               rtol=1e-5, atol=1e-5)
    one, _ = model.predict_batch_with_aux(params, batch, eos_id=-1, max_decode_len=LD)
    two, _ = model.predict_batch_with_aux(params, alone[name], eos_id=-1, max_decode_len=LD)
    np.testing.assert_array_equal(one[0], two[0, 0])


def test_frame_order_reaches_the_output(setup):
  """With the time embedding, reversing a clip's frames changes the loss (it would not if the
  frames were only a set); the frames really attend to each other."""
  model, params, examples, _, _, _ = setup
  video = examples["video"]
  backwards = pe.PackedExample(video.images[::-1], video.inputs, video.targets, clip=True)
  loss_fn = jax.jit(lambda p, b: model.loss_fn(p, b, None)[0])
  forward = loss_fn(params, pe.pack_rows([[video], []], ROWS, SEP))
  reverse = loss_fn(params, pe.pack_rows([[backwards], []], ROWS, SEP))
  assert abs(float(forward) - float(reverse)) > 1e-4


def test_bad_examples_name_task_example_and_limit():
  examples, _ = _examples()
  big = pe.PackedExample(examples["two_shot"].images, np.ones(60, np.int32),
                         np.ones(2, np.int32), task_name="easy_vqa", record_id="easy_vqa:train[7]")
  with pytest.raises(pe.DataError, match=r"task 'easy_vqa' example easy_vqa:train\[7\]: 8 visual "
                                         r"tokens \+ 60 prompt tokens = 68 exceed the packed "
                                         r"encoder length 64"):
    pe.check_example(big, ROWS)
  rng = np.random.default_rng(1)
  huge = pe.PackedExample((_image(rng, 56, 48)[1],), np.ones(3, np.int32), np.ones(2, np.int32),
                          task_name="shapes_detection", record_id="shapes_detection:train[3]")
  with pytest.raises(pe.DataError, match=r"task 'shapes_detection' example "
                                         r"shapes_detection:train\[3\]: an image of 42 patches "
                                         r"exceeds the ViT sequence length 40"):
    pe.check_example(huge, ROWS)


def test_packed_batch_shapes_are_checked(setup):
  model, params, _, _, packed, _ = setup
  bad = dict(packed, encoder_positions=packed["encoder_positions"][:, :10])
  with pytest.raises(ValueError, match="encoder_positions.*input_length"):
    model.score_batch(params, bad)
  assert packed_batch.is_packed(packed)
