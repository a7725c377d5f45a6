"""palix: a JAX/Flax toolkit for PaLI-X-style vision-language models.

The package is split by concept: ``palix.layers`` (shared Flax layers with logical axis names),
``palix.models`` (ViT, text encoder-decoder, PaLI-X), ``palix.interop`` (weight importers),
``palix.cli`` (the ``palix`` command). ``palix.tasks`` (SeqIO, TensorFlow) and ``palix.eval``
(metrics and benchmarks) live in the top-level ``tasks/`` and ``eval/`` folders.

Importing ``palix`` never imports TensorFlow or seqio.
"""

__version__ = "0.1.0"
