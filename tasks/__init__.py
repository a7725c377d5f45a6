"""``palix.tasks``: the data layer (the only TensorFlow/seqio code in palix).

Entry points: ``palix.tasks.dataset.get_batches`` (numpy batches of the model keys, exactly
resumable), ``palix.tasks.registry.add_task`` / ``add_mixture`` and the sources in
``palix.tasks.sources``. See ``docs/data.md``. Importing this package has no side effects.
"""
