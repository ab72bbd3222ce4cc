"""The scale path checked without accelerators: the runner's train step and the evaluation's
forward and inversion of the ImageNet configs, lowered (not run) for CUDA and TPU.

The programs are built as on an accelerator (`jax.default_backend` reads 'gpu' while they
are built and traced: bfloat16 training, rolled block scans, donated state; the code asks
only "CPU or not", so a TPU builds the same program),
at a 32x32 input with blocks (1, 3, 1, 1) (stage 1: a rolled scan of 2 blocks), on 2 CPU
devices with the `shard_map` back end: a `jax.jit`, which this JAX can trace once and lower
for any platform (`Traced.lower(lowering_platforms=...)`; a pmap has no `trace`, and in this
JAX it is itself a jit of a shard_map). Every program lowers for both platforms with this
JAX (0.10.2): none is named as needing the device.
"""
import importlib
import re

import jax
import jax.numpy as jnp
import pytest

from irevnet_jax import input_pipeline
from irevnet_jax.train import program, state as state_lib, steps

PLATFORMS = ('cuda', 'tpu')
CONFIGS = ('bijective_released', 'injective')   # bijective.py: bijective_released's code path
BATCH, SIZE = 4, 32
# What this JAX cannot lower for a platform on a machine without it: (platform, step) -> why.
# Empty: everything lowers; an entry here makes the test check that it still fails.
CANNOT_LOWER = {}


def _config(name):
  config = importlib.import_module(f'experiments.configs.{name}').get_config()
  config.model.input_shape = (SIZE, SIZE, 3)
  config.model.blocks = (1, 3, 1, 1)
  config.dataset.name = 'synthetic'
  config.batch_size = config.eval_batch_size = BATCH
  config.parallel = 'shard_map'
  return config


def _traced_steps(name, monkeypatch):
  """{'train', 'eval', 'inversion'}: the program's steps traced from shapes, built and traced
  as on an accelerator."""
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  config = _config(name)
  source = input_pipeline.get_source(config.dataset, (SIZE, SIZE, 3))
  normalization = steps.Normalization(source.pixel_mean, source.pixel_std)
  prog = program.build_program(config, source.num_train_examples, normalization,
                               jax.local_devices()[:2])
  replicated, rows = prog.backend._replicated, prog.backend._batch_sharding
  state = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      state_lib.create_state(prog.train_net, prog.tx, 0, abstract=True))
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=rows)
  train_batch = {'image': spec((BATCH, SIZE, SIZE, 3), jnp.uint8),
                 'label': spec((BATCH,), jnp.int32)}
  eval_batch = dict(train_batch, mask=spec((BATCH,), jnp.float32),
                    index=spec((BATCH,), jnp.int32))
  traced = {'train': prog.train_step.trace(state, train_batch),
            'eval': prog.eval_step.trace(state, eval_batch),
            'inversion': prog.inversion_step.trace(state, eval_batch)}
  monkeypatch.undo()
  return traced


@pytest.mark.parametrize('name', CONFIGS)
def test_imagenet_steps_lower_for_cuda_and_tpu(name, monkeypatch):
  traced_steps = _traced_steps(name, monkeypatch)
  for platform in PLATFORMS:
    for step, traced in traced_steps.items():
      if (platform, step) in CANNOT_LOWER:
        with pytest.raises(Exception):
          traced.lower(lowering_platforms=(platform,))
        continue
      text = traced.lower(lowering_platforms=(platform,)).as_text()
      convolutions = re.findall(r'stablehlo\.convolution\(.*', text)
      assert convolutions, (platform, step)
      if step == 'train':      # as on the accelerator: bfloat16, a rolled scan, donation
        assert all('bf16' in c for c in convolutions), platform
        assert 'stablehlo.while' in text and 'jax.buffer_donor' in text, platform
        assert 'all_to_all' in text and 'all_reduce' not in text, 'ordered reductions'
      if step == 'inversion':  # exact: float32 at precision 'highest'
        assert all('HIGHEST' in c and 'bf16' not in c for c in convolutions), platform
