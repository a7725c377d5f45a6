"""Few-shot episodes: the text format, EpisodeSource, the remapped shape-name task and batches."""

import itertools
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf

from palix import few_shot
from palix.tasks import dataset
from palix.tasks import registry
from palix.tasks import vocabulary
from palix.tasks.sources import base
from palix.tasks.sources import easy_vqa
from palix.tasks.sources import episodes
from palix.tasks.sources import jsonl
from palix.tasks.sources import moving_shapes

SEP = vocabulary.SEPARATOR_ID


@pytest.fixture(scope="module")
def sentencepiece():
  return spm.SentencePieceProcessor(model_file=vocabulary.DEFAULT_MODEL)


@pytest.fixture(scope="module")
def vqa_base():
  return easy_vqa.EasyVqaSource("vqa")


@pytest.fixture(scope="module")
def vqa_episodes(vqa_base):
  return episodes.EpisodeSource(vqa_base, shots=2, name="test_vqa_episodes")


@pytest.fixture(scope="module")
def shape_sources():
  return episodes.RemappedShapeNamesSource(shots=3), episodes.RemappedShapeNamesSource(shots=0)


class _IndexSource(base.PythonSource):
  """Example i: a 4x4 image filled with the value i, prompt ``say {i}``, answer ``n{i}``."""

  def __init__(self, size=50, prompt="say {}"):
    super().__init__(("train",), {"train": size})
    self.prompt = prompt

  @property
  def pixel_shape(self):
    return (1, 4, 4, 3)

  def make_example(self, split, index):
    return base.PythonExample(np.full((1, 4, 4, 3), index, np.uint8), self.prompt.format(index),
                              f"n{index}")


# --- the text format -----------------------------------------------------------------------------

def test_episode_text_format():
  text = few_shot.episode_text([("caption en", "a red circle"), ("answer en why?", "no")],
                               "answer en what?")
  assert text == "caption en a red circle <sep> answer en why? no <sep> answer en what?"
  assert few_shot.episode_text([], "caption en") == "caption en"


@pytest.mark.parametrize("shots, query, message", [
    ([], " ", "empty query prompt"),
    ([], "a <sep> b", "query prompt"),
    ([("p <sep>", "a")], "q", "shot 1's prompt"),
    ([("p", "a"), ("p", "x<sep>")], "q", "shot 2's answer"),
    ([("p", "")], "q", "shot 1 has an empty answer"),
])
def test_episode_text_refuses_bad_parts(shots, query, message):
  with pytest.raises(ValueError, match=message):
    few_shot.episode_text(shots, query)


def test_separator_is_one_vocabulary_token(sentencepiece, vocab):
  assert few_shot.SEPARATOR == vocabulary.SEPARATOR_TOKEN and SEP == 1027
  assert sentencepiece.piece_to_id(few_shot.SEPARATOR) == SEP
  text = few_shot.episode_text([("caption en", "a blue circle")] * 3, "caption en")
  ids = list(vocab.encode(text))
  assert ids.count(SEP) == 3
  assert vocab.decode(ids) == text
  # Each <sep> is one id, not pieces of "<", "sep", ">".
  assert sentencepiece.encode("x <sep> y", out_type=str).count("<sep>") == 1


# --- EpisodeSource ---------------------------------------------------------------------------------

def test_vqa_episode_is_its_members_in_order(vqa_episodes, vqa_base):
  records = vqa_base.records("test")
  for index in (0, 1, 77, 9672):
    episode = vqa_episodes.raw_example("test", index)
    *shots, query = [records[m] for m in episode["members"]]
    assert len(episode["members"]) == 3 and len(set(episode["members"])) == 3
    assert episode["image_paths"] == tuple(r.image_paths[0] for r in shots + [query])
    assert episode["inputs"] == few_shot.episode_text([(r.inputs, r.targets) for r in shots],
                                                      query.inputs)
    assert episode["targets"] == query.targets
    assert episode["answers"] == query.extras["answers"]
    assert episode["record_id"].startswith(f"test_vqa_episodes:test[{index}]")
    assert all(r.record_id in episode["record_id"] for r in shots + [query])
    assert episode["record_id"].endswith(f"query: {query.record_id}")


def test_text_pairs_match_the_tensors(vqa_episodes):
  pairs = list(itertools.islice(vqa_episodes.text_pairs("test"), 4))
  for index, (inputs, targets) in enumerate(pairs):
    episode = vqa_episodes.raw_example("test", index)
    assert (episode["inputs"], episode["targets"]) == (inputs, targets)


def test_query_is_never_a_shot_and_queries_are_spread(vqa_episodes, vqa_base):
  table = vqa_episodes.member_table("test")
  num = vqa_base.num_input_examples("test")
  assert table.shape == (num, 3) and table.min() >= 0 and table.max() < num
  assert all(len(set(row)) == 3 for row in table.tolist())  # the query is not among its shots
  # Queries are uniform draws: the expected share of distinct base examples among n draws from n
  # is 1 - (1 - 1/n)^n ~ 0.632 (standard deviation ~0.004 at n = 9673).
  assert abs(len(np.unique(table[:, -1])) / num - (1 - (1 - 1 / num) ** num)) < 0.02
  # Shots are independent of the query's position among the base examples.
  assert abs(np.corrcoef(table[:, 0], table[:, -1])[0, 1]) < 0.05


def test_zero_shot_episodes_share_the_queries(vqa_base, vqa_episodes):
  zero = episodes.EpisodeSource(vqa_base, shots=0)
  for index in (3, 500):
    query_only = zero.raw_example("test", index)
    full = vqa_episodes.raw_example("test", index)
    assert query_only["members"] == full["members"][-1:]
    assert query_only["targets"] == full["targets"]
    assert query_only["inputs"] == full["inputs"].split(" <sep> ")[-1]


def test_episodes_are_deterministic_and_random_access(vqa_base, vqa_episodes):
  order = [vqa_episodes.raw_example("train", i) for i in (9, 4, 9)]
  again = episodes.EpisodeSource(vqa_base, shots=2, name="test_vqa_episodes")
  assert order[0] == order[2] == again.raw_example("train", 9)
  assert order[1] == again.raw_example("train", 4)
  other_seed = episodes.EpisodeSource(vqa_base, shots=2, name="test_vqa_episodes", data_seed=1)
  assert other_seed.raw_example("train", 9)["members"] != order[0]["members"]


def test_pixel_base_images_follow_the_members():
  source = episodes.EpisodeSource(_IndexSource(), shots=3, num_examples={"train": 7})
  assert source.num_input_examples("train") == 7 and source.images_per_example == 4
  for index in range(7):
    episode = source.raw_example("train", index)
    assert episode["pixels"].shape == (4, 4, 4, 3)
    np.testing.assert_array_equal(episode["pixels"][:, 0, 0, 0], episode["members"])
    *shots, query = episode["members"]
    assert episode["inputs"] == few_shot.episode_text([(f"say {m}", f"n{m}") for m in shots],
                                                      f"say {query}")
    assert episode["targets"] == f"n{query}"
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"outside \[0, 7\)"):
    source.raw_example("train", 7)


def test_separator_inside_a_base_prompt_is_an_error():
  source = episodes.EpisodeSource(_IndexSource(prompt="say <sep> {}"), shots=1)
  with pytest.raises(tf.errors.InvalidArgumentError, match="must not contain <sep>"):
    source.raw_example("train", 0)
  with pytest.raises(ValueError, match="contains <sep>"):
    next(source.text_pairs("train"))


@pytest.mark.parametrize("shots", [-1, 1.5, True, "2"])
def test_bad_shots_values(shots):
  with pytest.raises(ValueError, match="shots must be an integer"):
    episodes.EpisodeSource(_IndexSource(), shots=shots)


def test_bad_bases_are_refused(media_dir):
  with pytest.raises(ValueError, match="6 images .frames. per example"):
    episodes.EpisodeSource(moving_shapes.MovingShapesSource("vqa"), shots=1)
  videos = episodes.EpisodeSource(jsonl.JsonlSource({"train": str(media_dir / "video.jsonl")}),
                                  shots=1)
  with pytest.raises(ValueError, match="a video .*clip.mp4"):
    videos.num_input_examples("train")
  several = episodes.EpisodeSource(jsonl.JsonlSource({"train": str(media_dir / "data.jsonl")}),
                                   shots=1)
  with pytest.raises(ValueError, match="2 images in .*data.jsonl:5"):
    several.record_fn("train")
  too_few = episodes.EpisodeSource(_IndexSource(size=3), shots=3)
  with pytest.raises(ValueError, match="need 4 distinct base examples; the base has 3"):
    too_few.record_fn("train")
  with pytest.raises(ValueError, match="splits .'test'."):
    episodes.EpisodeSource(_IndexSource(), shots=1, num_examples={"test": 3})
  with pytest.raises(ValueError, match="shots must be one of .0, 3."):
    episodes.RemappedShapeNamesSource(shots=2)


# --- in-context shape names ---------------------------------------------------------------------

def test_word_pool_is_single_unrelated_pieces(sentencepiece):
  assert len(set(episodes.WORD_POOL)) == len(episodes.WORD_POOL) == 8
  assert not set(episodes.WORD_POOL) & (set(easy_vqa.SHAPES) | set(easy_vqa.COLORS))
  for word in episodes.WORD_POOL:
    pieces = sentencepiece.encode(f"{episodes.PROMPT} {word} <sep>", out_type=str)
    assert pieces[2] == f"\u2581{word}" and pieces.count("<sep>") == 1, pieces


def test_the_answer_is_only_in_the_context(shape_sources):
  three, _ = shape_sources
  for index in range(300):
    episode = three.episode("test", index)
    assert sorted(episode.mapping) == sorted(easy_vqa.SHAPES)
    assert len(set(episode.mapping.values())) == 3
    assert sorted(s for _, s in episode.context) == sorted(easy_vqa.SHAPES)
    assert episode.query[0] not in [i for i, _ in episode.context]
    inputs, target = three._texts(episode)  # pylint: disable=protected-access
    *shots, query_prompt = inputs.split(" <sep> ")
    assert query_prompt == episodes.PROMPT
    words = [shot[len(episodes.PROMPT) + 1:] for shot in shots]
    assert target == episode.mapping[episode.query[1]]
    assert [s for (_, s), w in zip(episode.context, words) if w == target] == [episode.query[1]]
  targets = [three.episode("train", i).target for i in range(400)]
  assert set(targets) == set(episodes.WORD_POOL)  # fresh mappings: every word gets used


def test_shape_name_pixels_show_the_named_shapes(shape_sources, vocab):
  three, _ = shape_sources
  for index in range(5):
    example = three.make_example("test", index)
    episode = three.episode("test", index)
    assert example.pixels.shape == (4, 64, 64, 3)
    shapes = [easy_vqa.labels_from_pixels(image)[0] for image in example.pixels]
    assert shapes == [s for _, s in episode.context] + [episode.query[1]]
    for shown in example.pixels[:3]:
      assert not np.array_equal(shown, example.pixels[3])
    assert list(vocab.encode(example.inputs)).count(SEP) == 3


def test_zero_and_three_shot_agree_on_the_query(shape_sources):
  three, zero = shape_sources
  assert zero.pixel_shape == (1, 64, 64, 3) and three.pixel_shape == (4, 64, 64, 3)
  for split, index in (("test", 0), ("test", 499), ("train", 12345)):
    with_context, alone = three.make_example(split, index), zero.make_example(split, index)
    np.testing.assert_array_equal(alone.pixels[0], with_context.pixels[-1])
    assert alone.targets == with_context.targets
    assert alone.inputs == episodes.PROMPT
    assert with_context.inputs.endswith(f"<sep> {episodes.PROMPT}")


# --- registered tasks through the batch API ------------------------------------------------------

def _first_batch(name, inputs_length, batch_size=4):
  batches = dataset.get_batches(
      name, split="test", batch_size=batch_size, num_images=4, image_size=32,
      feature_lengths={"inputs": inputs_length, "targets": 8}, shuffle=False, repeat=False)
  try:
    return next(batches)
  finally:
    batches.close()


def _assert_images_in_order(batch, rows_pixels):
  """Each image slot is closest (2x2 mean pooling of the 64px original) to its own image."""
  for images, pixels in zip(batch["images"], rows_pixels):
    pooled = pixels.reshape(len(pixels), 32, 2, 32, 2, 3).mean((2, 4)) / 127.5 - 1
    distance = np.abs(images[:len(pixels), None] - pooled[None]).mean((2, 3, 4))
    assert np.all(np.diag(distance) < 0.05), distance
    np.testing.assert_array_equal(distance.argmin(1), np.arange(len(pixels)))


@pytest.mark.parametrize("name, shots, tokens", [("shape_names_3shot", 3, 18),
                                                 ("shape_names_0shot", 0, 3)])
def test_shape_name_tasks_batch(name, shots, tokens, vocab):
  batch = _first_batch(name, inputs_length=24)
  source = registry.BUILTIN_TASKS[name].make_source()
  examples = [source.make_example("test", i) for i in range(4)]
  np.testing.assert_array_equal(batch["image_mask"].sum(1), [shots + 1] * 4)
  for row, example in zip(batch["encoder_input_tokens"], examples):
    expected = list(vocab.encode(example.inputs)) + [1]
    # 3-shot: 3 x (shape, en, word, "▁", <sep>) + (shape, en) + EOS = 18; 0-shot: 2 + EOS = 3.
    assert len(expected) == tokens
    np.testing.assert_array_equal(row[:tokens], expected)
    assert not row[tokens:].any() and list(row).count(SEP) == shots
  for row, example in zip(batch["decoder_target_tokens"], examples):
    assert vocab.decode([t for t in row.tolist() if t > 1]) == example.targets
  _assert_images_in_order(batch, [e.pixels for e in examples])


def test_easy_vqa_episodes_batch(vocab):
  # 2-shot easy-VQA prompts take 29-42 tokens with EOS (train and test), so 24 is too short.
  with pytest.raises(base.DataError, match="'easy_vqa_episodes': inputs is longer than .* 24"):
    _first_batch("easy_vqa_episodes", inputs_length=24)
  batch = _first_batch("easy_vqa_episodes", inputs_length=48)
  source = dataset.get_task_or_mixture("easy_vqa_episodes").source
  np.testing.assert_array_equal(batch["image_mask"].sum(1), [3] * 4)
  rows_pixels = []
  for index, row in enumerate(batch["encoder_input_tokens"]):
    episode = source.raw_example("test", index)
    np.testing.assert_array_equal(row[:row.tolist().index(1)], vocab.encode(episode["inputs"]))
    assert list(row).count(SEP) == 2
    rows_pixels.append(np.stack([easy_vqa.read_png(p) for p in episode["image_paths"]]))
  _assert_images_in_order(batch, rows_pixels)


def test_episode_tasks_are_evaluated_by_accuracy():
  registry.ensure_registered()
  for name, metric in (("easy_vqa_episodes", "vqa_accuracy"), ("shape_names_3shot", "exact_match"),
                       ("shape_names_0shot", "exact_match")):
    declared = registry.BUILTIN_TASKS[name]
    task = dataset.get_task_or_mixture(name)
    assert list(task.predict_metric_fns) == list(declared.metric_fns)
    postprocess = task.postprocess_fn or (lambda text, **_: text)
    targets = [postprocess(t, example={}, is_target=True) for t in ("bag", "boot")]
    assert declared.metric_fns[0](targets, ["bag", "coat"])[metric] in (0.5, 50.0)


def test_few_shot_module_needs_no_tensorflow():
  code = ("import sys; from palix import few_shot; few_shot.episode_text([('a', 'b')], 'c'); "
          "assert 'tensorflow' not in sys.modules and 'seqio' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_evaluation_reads_episodes_from_the_pipelines_raw_fields(vqa_episodes, vqa_base,
                                                                   sentencepiece):
  """``palix eval``'s examples come with their batch rows, from the same pipeline element: the
  episode's texts, query answers, image files and original size."""
  from palix.tasks import eval_examples  # pylint: disable=g-import-not-at-top
  registry.add_task("test_vqa_episodes", vqa_episodes, replace=True)
  batches = eval_examples.evaluation_batches(
      "test_vqa_episodes", split="test", batch_size=2, num_images=3, image_size=16,
      feature_lengths={"inputs": 48, "targets": 8}, max_examples=3, keep_media=3)
  rows = [(batch, row, example) for batch, chunk in batches for row, example in enumerate(chunk)]
  assert [example["index"] for _, _, example in rows] == [0, 1, 2]
  for batch, row, example in rows:
    episode = vqa_episodes.raw_example("test", example["index"])
    assert example["inputs"] == episode["inputs"] and example["targets"] == episode["targets"]
    assert example["answers"] == episode["answers"]
    assert example["record_id"] == episode["record_id"]
    assert example["image_paths"] == tuple(vqa_base.records("test")[m].image_paths[0]
                                           for m in episode["members"])
    assert example["image_size"] == (64, 64)
    # The batch row is this example's: its prompt tokens are the example's prompt.
    prompt = batch["encoder_input_tokens"][row]
    assert list(prompt[:list(prompt).index(1)]) == sentencepiece.encode(example["inputs"])
