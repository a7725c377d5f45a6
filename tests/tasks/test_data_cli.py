"""``palix data list|show`` and ``palix vocab train``, run in-process."""

import sentencepiece as spm
from PIL import Image

from palix.cli import main as cli
from palix.tasks import vocabulary

from tasks_testdata import needs_fashion_mnist  # pylint: disable=g-bad-import-order


def test_data_list_shows_tasks_and_mixtures(capsys):
  assert cli.main(["data", "list"]) == 0
  out = capsys.readouterr().out
  for name in ("easy_vqa ", "easy_vqa_caption", "fashion_mnist_caption", "shapes_detection",
               "moving_shapes_vqa", "easy_vqa_mix", "embedded_mix"):
    assert name in out
  assert "mixture" in out and "easy_vqa 75%" in out


@needs_fashion_mnist
def test_data_show_prints_examples_and_writes_a_grid(tmp_path, capsys):
  grid = tmp_path / "grid.png"
  assert cli.main(["data", "show", "--task", "shapes_detection", "--split", "test", "--n", "4",
                   "--image_size", "64", "--in_order", "--output", str(grid)]) == 0
  out = capsys.readouterr().out
  assert out.count("prompt: 'detect ") == 4 and "target: '<loc" in out
  with Image.open(grid) as image:
    assert image.size[0] == 4 * (192 + 4)  # four cells of 192 px in one row


def test_data_show_imports_a_module_with_user_tasks(media_dir, tmp_path, monkeypatch, capsys):
  module = tmp_path / "my_palix_tasks.py"
  data = str(media_dir / "data.jsonl")
  module.write_text(
      "from palix.tasks import registry\n"
      "from palix.tasks.sources import jsonl\n"
      f"registry.add_task('my_jsonl', jsonl.JsonlSource({{'train': {data!r}}}), replace=True)\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  assert cli.main(["data", "show", "--module", "my_palix_tasks", "--task", "my_jsonl", "--n", "2",
                   "--num_images", "2", "--in_order"]) == 0
  out = capsys.readouterr().out
  assert "prompt: 'caption en'" in out and "target: 'a red square'" in out


def test_vocab_train_writes_a_palix_model(tmp_path, capsys):
  output = tmp_path / "sp.model"
  assert cli.main(["vocab", "train", f"--output={output}", "--vocab_size=1500",
                   "--tasks=easy_vqa_caption"]) == 0
  assert "pieces from" in capsys.readouterr().out
  processor = spm.SentencePieceProcessor(model_file=str(output))
  vocabulary.check_layout(processor, str(output))
  assert processor.encode("a teal triangle", out_type=str) == ["▁a", "▁teal", "▁triangle"]
