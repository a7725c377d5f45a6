"""The GPU suite's PaLI-X generation workload on its tiny shape (what a device call runs at the
PaliGemma-3B shape), its on-device init, and the ratio table the device script prints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from palix import partitioning
from palix.eval.perf import gpu_suite, gpu_table


@pytest.fixture(scope="module")
def tiny_run():
  return gpu_suite.bench_paligemma(tiny=True, iters=1)


def test_tiny_generation_runs_and_reports(tiny_run):
  result, model, _, inputs, tokens = tiny_run
  batch, new = inputs["encoder_input_tokens"].shape[0], model.max_target_len
  assert tokens.shape == (batch, new)
  assert result["tokens_per_s"] == pytest.approx(batch * new / result["s"])
  assert result["encoder_tokens"] == (56 // 14) ** 2 + model.max_input_len  # 16 patches + prompt


def test_bytes_per_step_counts_decoder_weights_tied_embedding_and_cache(tiny_run):
  result, model, _, inputs, _ = tiny_run
  t5 = model.config.t5
  d, h, dh, f, layers = t5.emb_dim, t5.num_heads, t5.head_dim, t5.mlp_dim, t5.num_decoder_layers
  per_layer = 2 * 4 * d * h * dh + 3 * d * f + 3 * d  # self + cross attention, gated MLP, 3 norms
  decoder = layers * per_layer + d + t5.relative_attention_num_buckets * h  # + final norm, relpos
  embedding = t5.vocab_size * d  # tied: the logits read the whole table
  batch, enc = inputs["encoder_input_tokens"].shape[0], result["encoder_tokens"]
  cache = 2 * (batch * layers * (enc + result["new"]) * h * dh)  # cross + self K/V
  expected = 2 * (decoder + embedding + cache) + batch * enc  # bf16, plus the bool encoder mask
  assert result["bytes_per_step"] == expected


def test_optimised_greedy_equals_teacher_forced_argmax(tiny_run):
  """The benchmark's decoder (bf16 params, scanned layers, KV cache, one compiled loop) picks at
  every step the argmax of the uncached reference path (teacher forcing on its own tokens)."""
  _, model, params, inputs, tokens = tiny_run
  tokens = np.asarray(tokens)
  decoder_inputs = np.concatenate([np.zeros_like(tokens[:, :1]), tokens[:, :-1]], axis=1)
  batch = dict(inputs, decoder_input_tokens=decoder_inputs)
  logits = np.asarray(jax.jit(model.compute_logits)(params, batch))
  top2 = np.sort(logits, axis=-1)[..., -2:]
  clear = top2[..., 1] - top2[..., 0] > 0.05  # bf16 rounding may flip only near-ties
  assert clear.mean() > 0.8
  np.testing.assert_array_equal(np.argmax(logits, -1)[clear], tokens[clear])


@pytest.mark.slow  # the eager reference init alone takes tens of seconds
def test_init_on_device_is_the_reference_init_in_bf16_and_sharded(tiny_run):
  _, model, params, _, _ = tiny_run
  rng = jax.random.PRNGKey(0)  # the benchmark's init key
  reference = nn.meta.unbox(model.get_initial_variables(rng)["params"])  # eager, not jitted
  boxed = jax.eval_shape(model.get_initial_variables, rng)["params"]
  shardings = partitioning.Partitioner().param_shardings(boxed)
  flat, tree = jax.tree.flatten(params)
  assert tree == jax.tree.structure(reference)
  for ours, ref, sharding in zip(flat, jax.tree.leaves(reference), jax.tree.leaves(shardings)):
    assert ours.dtype == jnp.bfloat16 and ours.shape == ref.shape
    assert ours.sharding.is_equivalent_to(sharding, ours.ndim)
    np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(ref, np.float32),
                               rtol=1e-2, atol=1e-2)


def _log(tmp_path, name, results):
  path = tmp_path / name
  path.write_text("jax 0.x\n" + "".join(f"RESULT {r}\n" for r in results))
  return str(path)


def test_table_ratios_mfu_and_bandwidth_fraction(tmp_path):
  palix = _log(tmp_path, "palix.log", [
      '{"name": "palix_vit_l16_train_bf16", "images_per_s": 1300, "train_tflops": 400,'
      ' "step_ms": 200, "forward_ms": 60, "forward_backward_ms": 180, "optimizer_ms": 20,'
      ' "async_step_ms": 198, "host_gap_ms": 2}',
      '{"name": "palix_t5_large_greedy_bf16", "tokens_per_s": 19000, "bytes_per_step": 2.4e9,'
      ' "decode_step_ms": 2.0}',
      '{"name": "membw_copy", "bytes_per_s": 4.3e12}'])
  peer = _log(tmp_path, "peer.log", [
      '{"name": "jax_matmul_bf16", "tflops": 800}',
      '{"name": "timm_vit_l16_train_compiled", "img_per_s": 1000}',
      '{"name": "hf_t5_large_generate_bf16", "tokens_per_s": 1000}',
      '{"name": "hf_paligemma3b_generate_bf16", "tokens_per_s": 690}'])
  text = gpu_table.table(gpu_table.read_results(palix), gpu_table.read_results(peer), 4.8e12)
  rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines()}
  vit = rows["ViT-L/16 224 px AdamW train, batch 256 (img/s)"]
  assert "| 1.30x | >= 1.3x | yes |" in vit and "MFU 50% of 800 TFLOP/s" in vit
  t5 = rows["T5-v1.1-large greedy, B 64, 256 in, 64 new, fp32 params (tok/s)"]
  # 2.4 GB at 4.8 TB/s is a 0.5 ms floor; a 2 ms step is 25% of the limit
  assert "| 19.00x | >= 20x | no |" in t5 and "25% of bandwidth limit (0.50 ms floor" in t5
  pali = rows["PaLI-X at the PaliGemma-3B shape, B 16, 256+8 in, 64 new (tok/s)"]
  assert "missing (palix_paligemma3b_shape_greedy_bf16)" in pali and "not measured" in pali
  # 400 of 800 TFLOP/s during a 200 ms step: the matmuls alone would take 100 ms
  assert ("step 200.0 ms: forward 60.0 (30%), backward 120.0 (60%), optimizer update 20.0 (10%)"
          in text and "would take 100.0 ms" in text)
  assert "measured copy bandwidth: 4.3 TB/s" in text and "TINY" not in text


def test_table_names_a_bad_result_line(tmp_path):
  path = tmp_path / "palix.log"
  path.write_text("jax\nRESULT {not json\n")
  with pytest.raises(ValueError, match=r"palix.log:2: RESULT line is not JSON"):
    gpu_table.read_results(str(path))
