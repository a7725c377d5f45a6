"""Evaluation reports: ``write_report(output_dir, metrics=..., samples=..., title=...)`` writes
metrics.json, metrics.md and a report.html with sample images. See docs/evaluation.md."""

from palix.eval.report.sample import ReportBox, ReportSample
from palix.eval.report.writer import ReportFiles, write_report
