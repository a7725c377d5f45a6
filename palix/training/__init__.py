"""Training, inference and evaluation for every ``palix.models.base.BaseModel`` (t5x's shape).

Modules: ``trainer`` (the loop), ``train_step``, ``train_state``, ``optimizers``, ``schedules``,
``checkpoints``, ``metrics_writer``, ``infer``, ``data`` (the batch-source seam),
``synthetic_data`` (a TensorFlow-free task), ``distributed``, ``run_config`` (gin run files).
Sharding lives in ``palix.partitioning``. See docs/training.md.
"""
