"""``python -m palix.eval.perf.input_pipeline``: examples/s of the palix input pipeline.

Measures ``palix.tasks.dataset.get_batches`` (position-indexed, exactly resumable) on a mixture
(default: ``easy_vqa_mix``), and as the peer, in the same run and on the same cores, the plain
seqio pipeline over the same tasks: ``Mixture.get_dataset`` (seqio's shuffle buffer and
``sample_from_datasets``), then the same feature converter and batching. Both decode PNGs, resize,
tokenize and pad identically; the difference is how examples are chosen (random access by
position vs. streaming through a shuffle buffer). The two are timed alternately, median of
``--repeats``; only one pipeline exists at a time (no background prefetching of the other).
tf.data gets ``--threads`` threads and the process is pinned to that many CPUs.
"""

import argparse
import os
import statistics
import time


def _pin(threads: int) -> str:
  cpus = sorted(os.sched_getaffinity(0))
  if len(cpus) > threads:
    os.sched_setaffinity(0, cpus[:threads])
  return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))


def _rate(iterator, batches: int, batch_size: int, warmup: int) -> float:
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch_size / (time.perf_counter() - start)


def _seqio_peer(name, split, batch_size, lengths, image_size, num_images, seed, threads):
  """seqio's own streaming pipeline over the same tasks, then palix's converter."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from palix.tasks import dataset, feature_converter, preprocessors
  provider = dataset.get_task_or_mixture(name)
  sequence_length = dict(lengths, **{preprocessors.IMAGE_SIZE_KEY: image_size})
  ds = provider.get_dataset(sequence_length, split=split, shuffle=True, seed=seed,
                            num_epochs=None, trim_output_features=False)
  converter = feature_converter.PaliXFeatureConverter(num_images, image_size, task_name=name)
  ds = converter(ds, lengths).batch(batch_size, drop_remainder=True).prefetch(2)
  return iter(_with_threads(ds, threads, tf).as_numpy_iterator())


def _palix(name, split, batch_size, lengths, image_size, num_images, seed, threads):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from palix.tasks import dataset  # pylint: disable=g-import-not-at-top
  ds = dataset.make_dataset(name, split=split, batch_size=batch_size, feature_lengths=lengths,
                            num_images=num_images, image_size=image_size, seed=seed)
  return iter(_with_threads(ds, threads, tf).as_numpy_iterator())


def _with_threads(ds, threads, tf):
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  return ds.with_options(options)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--task", default="easy_vqa_mix", help="task or mixture")
  parser.add_argument("--split", default="train")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--inputs_length", type=int, default=32)
  parser.add_argument("--targets_length", type=int, default=16)
  parser.add_argument("--batches", type=int, default=20, help="timed batches per repeat")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--threads", type=int, default=2, help="tf.data threads and pinned CPUs")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  cpus = _pin(args.threads)
  from palix.tasks import tf_setup  # pylint: disable=g-import-not-at-top
  tf_setup.quiet_tensorflow_logs()
  tf_setup.configure_tensorflow()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_inter_op_parallelism_threads(args.threads)
  tf.config.threading.set_intra_op_parallelism_threads(args.threads)
  lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
  common = (args.task, args.split, args.batch_size, lengths, args.image_size, 1, args.seed,
            args.threads)
  makers = {"palix get_batches": _palix, "seqio get_dataset": _seqio_peer}
  rates = {name: [] for name in makers}
  setup = {name: [] for name in makers}
  for _ in range(args.repeats):
    for name, make in makers.items():  # one pipeline alive at a time: no background contention
      start = time.perf_counter()
      iterator = make(*common)
      next(iterator)  # builds the pipeline (and fills seqio's shuffle buffers)
      setup[name].append(time.perf_counter() - start)
      rates[name].append(_rate(iterator, args.batches, args.batch_size, args.warmup))
      del iterator  # frees the tf.data threads (their Python ops would block exit)
  load = os.getloadavg()[0]
  print(f"task {args.task}/{args.split}, batch {args.batch_size}, image {args.image_size}px, "
        f"text {lengths}, {args.threads} tf.data threads on CPUs {cpus}, load average {load:.1f}")
  for name, values in rates.items():
    print(f"{name:18s} {statistics.median(values):8.1f} examples/s  "
          f"(runs: {', '.join(f'{v:.1f}' for v in values)}; time to first batch "
          f"{statistics.median(setup[name]):.1f} s)")
  medians = {name: statistics.median(values) for name, values in rates.items()}
  ratio = medians["palix get_batches"] / medians["seqio get_dataset"]
  print(f"ratio palix / seqio: {ratio:.2f}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
