"""``write_report``: metrics.json, metrics.md and report.html (with PNGs) in one folder."""

import glob
import json
import os
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Union

from palix.eval.report import html_page, images, metrics_table
from palix.eval.report.sample import ReportSample, as_report_sample

IMAGE_DIR = "images"


class ReportFiles(NamedTuple):
  metrics_json: str
  metrics_md: str
  html: str
  images: list


def write_report(output_dir: str, *, metrics: Mapping[str, Any],
                 samples: Sequence[Union[ReportSample, Mapping[str, Any]]], title: str,
                 description: str = "", max_samples: Optional[int] = None) -> ReportFiles:
  """Write an evaluation report into ``output_dir`` (created if needed).

  * ``metrics.json``: the metrics dict (nested dicts kept; NaN/inf written as ``null``);
  * ``metrics.md``: the same as a markdown table (nested keys joined with ``/``);
  * ``report.html``: metrics table and one card per sample (image(s) with boxes, prompt,
    prediction, target), self-contained apart from the PNGs in ``images/`` next to it.

  Args:
    metrics: metric name -> value (numbers, strings, or nested dicts of them).
    samples: :class:`ReportSample` objects or dicts with its field names.
    title: page and table title.
    description: one line under the title (model, checkpoint, split...).
    max_samples: show only the first ``max_samples`` samples.
  """
  if max_samples is not None and max_samples < 0:
    raise ValueError(f"max_samples must be >= 0; got {max_samples}")
  total = len(samples)
  chosen = [as_report_sample(i, s) for i, s in enumerate(samples[:max_samples])]
  os.makedirs(os.path.join(output_dir, IMAGE_DIR), exist_ok=True)
  for stale in glob.glob(os.path.join(output_dir, IMAGE_DIR, "sample_*.png")):
    os.remove(stale)  # left by an earlier report with more samples

  json_path = os.path.join(output_dir, "metrics.json")
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump(metrics_table.json_safe(metrics), f, indent=2, allow_nan=False)
    f.write("\n")
  md_path = os.path.join(output_dir, "metrics.md")
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(metrics_table.markdown(title, metrics))

  image_paths, written = [], []
  for index, sample in enumerate(chosen):
    relative = []
    for k, image in enumerate(images.split_images(index, sample.image)):
      name = f"{IMAGE_DIR}/sample_{index:05d}_{k}.png"
      path = os.path.join(output_dir, name)
      boxes = ({"predicted_boxes": sample.predicted_boxes, "target_boxes": sample.target_boxes}
               if k == 0 else {})
      images.render_png(index, image, path, **boxes)
      relative.append(name)
      written.append(path)
    image_paths.append(relative)

  html_path = os.path.join(output_dir, "report.html")
  with open(html_path, "w", encoding="utf-8") as f:
    f.write(html_page.render(title, description, metrics, chosen, image_paths, total))
  return ReportFiles(json_path, md_path, html_path, written)
