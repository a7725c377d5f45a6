"""The HTML page of a report: a metrics table on top, then a grid of sample cards.

Every piece of text goes through ``html.escape``; the page has no scripts and no external
resources (inline CSS, images referenced by relative paths next to the page).
"""

import html
from typing import Any, List, Mapping, Sequence

from palix.eval.report import images, metrics_table
from palix.eval.report.sample import ReportSample, extra_items

_CSS = """
:root { --bg:#f5f6f8; --card:#fff; --ink:#1f2933; --muted:#6b7280; --line:#e5e7eb;
  --ok:#16a34a; --bad:#dc2626; --pred:rgb%s; --gt:rgb%s; }
* { box-sizing:border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }
header { padding:28px 32px 8px; }
h1 { margin:0 0 4px; font-size:26px; font-weight:650; }
.sub { margin:0; color:var(--muted); }
section, main { padding:12px 32px; }
table.metrics { border-collapse:collapse; background:var(--card); border-radius:10px;
  overflow:hidden; box-shadow:0 1px 3px rgba(0,0,0,.08); min-width:320px; }
table.metrics th, table.metrics td { padding:7px 16px; border-bottom:1px solid var(--line);
  text-align:left; }
table.metrics th { background:#eef0f4; font-size:12px; text-transform:uppercase;
  letter-spacing:.05em; color:var(--muted); }
table.metrics td.value { font-variant-numeric:tabular-nums; text-align:right; font-weight:600; }
table.metrics tr:last-child td { border-bottom:none; }
.legend { color:var(--muted); font-size:14px; }
.swatch { display:inline-block; width:12px; height:12px; border-radius:2px; margin:0 4px 0 12px;
  vertical-align:-1px; }
.grid { display:grid; grid-template-columns:repeat(auto-fill,minmax(300px,1fr)); gap:18px; }
.card { background:var(--card); border-radius:12px; overflow:hidden; display:flex;
  flex-direction:column; box-shadow:0 1px 3px rgba(0,0,0,.08); border-top:4px solid var(--line); }
.card.ok { border-top-color:var(--ok); } .card.bad { border-top-color:var(--bad); }
.images { display:flex; gap:2px; background:#e9ecf1; justify-content:center; }
.images img { flex:1 1 0; min-width:0; max-width:100%%; max-height:300px; object-fit:contain;
  display:block; image-rendering:pixelated; }
.body { padding:12px 14px 14px; }
.head { display:flex; justify-content:space-between; align-items:baseline; gap:8px;
  margin-bottom:6px; }
.name { font-weight:600; color:var(--muted); font-size:13px; }
.badge { font-size:12px; font-weight:700; padding:2px 8px; border-radius:999px;
  background:#eef0f4; }
.badge.ok { background:#dcfce7; color:#166534; } .badge.bad { background:#fee2e2; color:#991b1b; }
dl { margin:0; display:grid; grid-template-columns:auto 1fr; gap:4px 10px; }
dt { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em;
  padding-top:2px; }
dd { margin:0; white-space:pre-wrap; word-break:break-word; }
dd.prediction { font-weight:600; }
footer { padding:16px 32px 32px; color:var(--muted); font-size:13px; }
""" % (images.PREDICTED_COLOR, images.TARGET_COLOR)


def _metrics_section(metrics: Mapping[str, Any]) -> str:
  body = "".join(f'<tr><td>{html.escape(name)}</td>'
                 f'<td class="value">{html.escape(metrics_table.format_value(value))}</td></tr>'
                 for name, value in metrics_table.rows(metrics))
  if not body:
    body = '<tr><td colspan="2">no metrics</td></tr>'
  return ('<section><table class="metrics"><thead><tr><th>metric</th><th>value</th></tr></thead>'
          f"<tbody>{body}</tbody></table></section>")


def _card(index: int, sample: ReportSample, image_paths: Sequence[str]) -> str:
  state = {True: " ok", False: " bad", None: ""}[sample.correct]
  parts = [f'<article class="card{state}">']
  if image_paths:
    parts.append('<div class="images">' + "".join(
        f'<img src="{html.escape(p)}" alt="sample {index} image {k}" loading="lazy">'
        for k, p in enumerate(image_paths)) + "</div>")
  parts.append('<div class="body"><div class="head">')
  parts.append(f'<span class="name">{html.escape(sample.title or f"#{index}")}</span>')
  if sample.score is not None:
    parts.append(f'<span class="badge{state}">'
                 f"{html.escape(metrics_table.format_value(sample.score))}</span>")
  parts.append("</div><dl>")
  targets = [sample.target] if isinstance(sample.target, str) else list(sample.target)
  fields = [("prompt", sample.prompt), ("prediction", sample.prediction),
            ("target", " | ".join(str(t) for t in targets))]
  fields += list(extra_items(sample).items())
  for name, value in fields:
    if value == "" and name != "prediction":
      continue
    css = ' class="prediction"' if name == "prediction" else ""
    parts.append(f"<dt>{html.escape(name)}</dt><dd{css}>{html.escape(str(value))}</dd>")
  parts.append("</dl></div></article>")
  return "".join(parts)


def render(title: str, description: str, metrics: Mapping[str, Any],
           samples: Sequence[ReportSample], image_paths: Sequence[List[str]],
           total_samples: int) -> str:
  """The whole page as a string."""
  has_boxes = any(s.predicted_boxes or s.target_boxes for s in samples)
  shown = (f"{len(samples)} of {total_samples} samples" if total_samples > len(samples)
           else f"{len(samples)} samples")
  sub = " · ".join(x for x in (description, shown) if x)
  legend = ""
  if has_boxes:
    legend = ('<section class="legend">boxes:<span class="swatch" style="background:var(--pred)">'
              '</span>predicted<span class="swatch" style="background:var(--gt)"></span>target'
              "</section>")
  cards = "".join(_card(i, s, p) for i, (s, p) in enumerate(zip(samples, image_paths)))
  return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
          f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
          f"<header><h1>{html.escape(title)}</h1><p class=\"sub\">{html.escape(sub)}</p></header>"
          f"{_metrics_section(metrics)}{legend}<main class=\"grid\">{cards}</main>"
          "<footer>metrics.json and metrics.md next to this page hold the same numbers."
          "</footer></body></html>\n")
