"""``palix serve``: prompt a trained PaLI-X model over HTTP, from a JSON API or a web page.

The pieces, one per module:

* :mod:`~palix.serve.limits` — what one request may ask (image size and count, text, decoding).
* :mod:`~palix.serve.request` — a JSON body -> a validated :class:`CompletionRequest` (4xx errors
  that name the field and the limit); :mod:`~palix.serve.images` decodes its uploads.
* :mod:`~palix.serve.engine` — one batched decode, step by step, with the streaming decoder.
* :mod:`~palix.serve.answer` — an answer being decoded: text so far, end, truncation, boxes.
* :mod:`~palix.serve.scheduler` — the bounded queue and the decode thread that batches
  compatible requests together, with per-request timeouts.
* :mod:`~palix.serve.app` — the Starlette routes (``/api/complete``, ``/api/stream`` with
  server-sent events, ``/api/info``, the page in ``static/``); :mod:`~palix.serve.server` runs it
  under uvicorn (``palix serve``).

Nothing here imports TensorFlow or seqio. See docs/serving.md.
"""
