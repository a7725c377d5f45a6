"""Helpers of the serving tests: a tiny PaLI-X model, test images, a server on a loopback port.

The model is small enough to compile in seconds; with random parameters (fixed seed) its answers
are arbitrary but deterministic, and differ from prompt to prompt, so a mixed-up response shows.
``train_to_answer`` teaches it one answer in a few seconds (the page test's detections).
"""

import contextlib
import os

import jax
import numpy as np
import optax

from palix import generate
from palix.models.palix_model import PaliXConfig, PaliXModel
from palix.models.t5 import T5Config
from palix.models.vit import ParallelBlock, ViTConfig
from palix.serve.limits import Limits
from palix.serve.scheduler import Batching
from palix.serve.server import ServerThread, build_app

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SP_MODEL = os.path.join(REPO, "tasks", "assets", "palix_sp.model")
IMG, SEP, NUM_IMAGES, MAX_INPUT, MAX_TARGET = 16, 1027, 3, 24, 16

# The same model as a gin file, for ``palix serve`` (vocab 2048 covers the palix vocabulary).
MODEL_GIN = f"""
import palix.models.palix_model
import palix.models.vit
ViTConfig.width = 32
ViTConfig.depth = 1
ViTConfig.mlp_dim = 64
ViTConfig.num_heads = 2
ViTConfig.patch_size = 8
ViTConfig.image_size = {IMG}
ViTConfig.block = %vit.ParallelBlock
T5Config.vocab_size = 2048
T5Config.emb_dim = 32
T5Config.num_heads = 2
T5Config.head_dim = 16
T5Config.mlp_dim = 64
T5Config.num_encoder_layers = 1
T5Config.num_decoder_layers = 1
PaliXConfig.vit = @ViTConfig()
PaliXConfig.t5 = @T5Config()
PaliXConfig.max_images = {NUM_IMAGES}
PaliXConfig.segment_separator_id = {SEP}
PaliXModel.config = @PaliXConfig()
PaliXModel.image_size = {IMG}
PaliXModel.num_images = {NUM_IMAGES}
PaliXModel.max_input_len = {MAX_INPUT}
PaliXModel.max_target_len = {MAX_TARGET}
MODEL = @PaliXModel()
"""

DETECT_PROMPT = "detect cat ; dog"
DETECT_ANSWER = ("<loc0100><loc0200><loc0500><loc0600> cat ; "
                 "<loc0300><loc0050><loc0900><loc0400> dog")


# The limits of the shared test server: small enough to exceed in a test.
TEST_LIMITS = Limits(max_request_bytes=200_000, max_image_bytes=20_000, max_image_side=128,
                     max_prompt_chars=60)


def tiny_model() -> PaliXModel:
  vit = ViTConfig(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=8, image_size=IMG,
                  block=ParallelBlock)
  t5 = T5Config(vocab_size=2048, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
                num_encoder_layers=1, num_decoder_layers=1)
  config = PaliXConfig(vit=vit, t5=t5, max_images=NUM_IMAGES, segment_separator_id=SEP)
  return PaliXModel(config, image_size=IMG, num_images=NUM_IMAGES, max_input_len=MAX_INPUT,
                    max_target_len=MAX_TARGET)


def random_images(count, seed=0):
  """``count`` RGB uint8 images of different sizes (the server resizes them)."""
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (20 + 4 * i, 16 + 8 * i, 3), dtype=np.uint8)
          for i in range(count)]


def train_to_answer(generator, image, prompt, answer, steps=150, learning_rate=1e-2):
  """Parameters that answer ``prompt`` about ``image`` with ``answer`` (teacher-forced Adam)."""
  model = generator.model
  inputs = generator.encode_prompt(image, prompt)
  target = generator.processor.encode(answer) + [model.eos_id]
  targets = np.zeros((1, model.max_target_len), np.int32)
  targets[0, :len(target)] = target
  batch = dict(inputs, decoder_target_tokens=targets,
               decoder_input_tokens=np.pad(targets[:, :-1], ((0, 0), (1, 0))),
               decoder_loss_weights=(targets > 0).astype(np.float32))
  optimizer = optax.adam(learning_rate)

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: model.loss_fn(p, batch, None)[0])(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params, state = generator.params, optimizer.init(generator.params)
  for _ in range(steps):
    params, state = step(params, state)
  return generate.Generator(model, params, generator.vocabulary_path)


@contextlib.contextmanager
def running_server(generator, limits=None, batching=None):
  """A server for ``generator`` on a free loopback port; yields its URL."""
  app = build_app(generator, limits or Limits(), batching or Batching(batch_sizes=(1, 4)))
  with ServerThread(app) as server:
    yield server.url
