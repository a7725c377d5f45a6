"""One report card: an example's image(s), prompt, prediction, target and optional boxes."""

import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union


@dataclasses.dataclass(frozen=True)
class ReportBox:
  """A box to draw: normalised ``(ymin, xmin, ymax, xmax)``, a label and an optional score."""
  box: Tuple[float, float, float, float]
  label: str = ""
  score: Optional[float] = None


@dataclasses.dataclass
class ReportSample:
  """What one card shows.

  ``image`` is ``[H, W, 3]``, ``[H, W]`` or ``[H, W, 1]`` (float in [-1, 1] as the model sees it,
  or uint8), or several images as ``[N, H, W, 3]`` / a list. Boxes are drawn on the first image.
  ``score`` (e.g. the example's VQA accuracy) is shown as a badge; ``correct`` colours the card's
  edge; ``extra`` adds key/value lines (question id, answer type, ...).
  """
  image: Any = None
  prompt: str = ""
  prediction: str = ""
  target: Union[str, Sequence[str]] = ""
  predicted_boxes: Sequence[ReportBox] = ()
  target_boxes: Sequence[ReportBox] = ()
  score: Optional[float] = None
  correct: Optional[bool] = None
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  title: str = ""


_FIELDS = {f.name for f in dataclasses.fields(ReportSample)}


def as_report_box(index: int, box: Any) -> ReportBox:
  """Accepts ReportBox, ScoredDetection / loc_tokens.Detection, a ``{"box", "label", "score"}``
  mapping or a bare 4-tuple."""
  if isinstance(box, ReportBox):
    return box
  if isinstance(box, Mapping):
    coords, label, score = box.get("box"), box.get("label", ""), box.get("score")
  elif hasattr(box, "box") and hasattr(box, "label"):
    coords, label, score = box.box, box.label, getattr(box, "score", None)
  else:
    coords, label, score = box, "", None
  try:
    coords = tuple(float(c) for c in coords)
  except (TypeError, ValueError):
    coords = ()
  if len(coords) != 4:
    raise ValueError(f"sample {index}: a box needs 4 normalised coordinates (ymin, xmin, ymax, "
                     f"xmax); got {box!r}")
  return ReportBox(coords, str(label), None if score is None else float(score))


def as_report_sample(index: int, sample: Union[ReportSample, Mapping[str, Any]]) -> ReportSample:
  """A :class:`ReportSample` from itself or from a dict with the same field names."""
  if isinstance(sample, Mapping):
    unknown = set(sample) - _FIELDS
    if unknown:
      raise ValueError(f"sample {index}: unknown keys {sorted(unknown)}; allowed {sorted(_FIELDS)}")
    sample = ReportSample(**sample)
  elif not isinstance(sample, ReportSample):
    raise ValueError(f"sample {index} must be a ReportSample or a dict; "
                     f"got {type(sample).__name__}")
  return dataclasses.replace(
      sample,
      predicted_boxes=[as_report_box(index, b) for b in sample.predicted_boxes],
      target_boxes=[as_report_box(index, b) for b in sample.target_boxes])


def extra_items(sample: ReportSample) -> Dict[str, str]:
  return {str(k): str(v) for k, v in sample.extra.items()}
