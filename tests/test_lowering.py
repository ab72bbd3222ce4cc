"""The scale path checked without accelerators: the runner's train step and the evaluation's
forward and inversion of the ImageNet configs, lowered (not run) for CUDA and TPU.

The programs are built as on an accelerator (`jax.default_backend` reads 'gpu' while they
are built and traced: bfloat16 training, donated state; the code asks only "CPU or not", so
a TPU builds the same program; the block scans roll for cuda and tpu whatever the host),
at a 32x32 input with blocks (1, 3, 1, 1) (stage 1: a rolled scan of 2 blocks), on 2 CPU
devices with the `shard_map` back end: a `jax.jit`, which `jax.export` lowers for any
platform (`platforms=`, with its checks of what may be serialised; a pmap cannot be
exported, and in this JAX it is itself a jit of a shard_map). Every program lowers for both
platforms with this JAX (0.10.2): `CANNOT_LOWER` names none.
"""
import importlib
import re

import jax
import jax.numpy as jnp
import pytest

import irevnet_jax
from irevnet_jax.model import presets
from irevnet_jax.train import parallel, program

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


def _steps_and_arguments(name, monkeypatch):
  """{'train', 'eval', 'inversion'}: (the program's jitted step, its argument shapes), the
  program built as on an accelerator."""
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  config = _config(name)
  prog = program.build_program(
      config, parallel.make_backend(config.parallel, jax.local_devices()[:2]))
  replicated, rows = prog.backend._replicated, prog.backend._batch_sharding
  state = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      prog.state_shapes)
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=rows)
  train_batch = {'image': spec((BATCH, SIZE, SIZE, 3), jnp.uint8),
                 'label': spec((BATCH,), jnp.int32)}
  eval_batch = dict(train_batch, mask=spec((BATCH,), jnp.float32),
                    index=spec((BATCH,), jnp.int32))
  return {'train': (prog.train_step, (state, train_batch)),
          'eval': (prog.eval_step, (state, eval_batch)),
          'inversion': (prog.inversion_step, (state, eval_batch))}


@pytest.mark.parametrize('name', CONFIGS)
def test_imagenet_steps_lower_for_cuda_and_tpu(name, monkeypatch):
  # Traced while 'gpu' is the backend (the jit caches the trace); each export only lowers.
  for step, (jitted, arguments) in _steps_and_arguments(name, monkeypatch).items():
    for platform in PLATFORMS:
      export = lambda: jax.export.export(jitted, platforms=(platform,))(*arguments)
      if (platform, step) in CANNOT_LOWER:
        with pytest.raises(Exception):
          export()
        continue
      text = export().mlir_module()
      convolutions = re.findall(r'stablehlo\.convolution.*', text)
      assert convolutions, (platform, step)
      if step == 'train':      # as on the accelerator: bfloat16, a rolled scan, donation
        assert all('bf16' in c for c in convolutions), platform
        assert 'stablehlo.while' in text and 'jax.buffer_donor' in text, platform
        assert 'all_to_all' in text and 'all_reduce' not in text, 'ordered reductions'
      if step == 'inversion':  # exact: float32 at precision 'highest'
        assert all('HIGHEST' in c and 'bf16' not in c for c in convolutions), platform


def _small_net(block_scan, backprop='reversible'):
  """Stage 1 has 3 blocks: its 2 alike blocks run as a scan (stage 0's one alike block runs
  unscanned)."""
  c = presets.base()
  c.input_shape, c.blocks, c.strides, c.widths = (8, 8, 3), (2, 3), (1, 2), (8, 32)
  c.num_classes, c.dropout_rate = 5, 0.1
  c.block_scan, c.backprop = block_scan, backprop
  return irevnet_jax.build(c)


def _exported_whiles(block_scan, platforms, function):
  """How many `stablehlo.while` loops `function` ('invert' or 'grad') holds when this CPU
  host exports it for `platforms`."""
  net = _small_net(block_scan)
  variables = jax.eval_shape(net.init, jax.random.PRNGKey(0),
                             jax.ShapeDtypeStruct((1, *net.input_shape), jnp.float32))
  if function == 'invert':
    fn, arguments = net.invert, (variables, jax.ShapeDtypeStruct((2, *net.z_shape), jnp.float32))
  else:
    def loss(params, batch_stats, x):
      (logits, z), _ = net.forward({'params': params, 'batch_stats': batch_stats}, x,
                                   train=True, rngs={'dropout': jax.random.PRNGKey(0)})
      return jnp.mean(logits) + jnp.mean(z)
    fn = jax.grad(loss)
    arguments = (variables['params'], variables['batch_stats'],
                 jax.ShapeDtypeStruct((2, *net.input_shape), jnp.float32))
  text = jax.export.export(jax.jit(fn), platforms=platforms)(*arguments).mlir_module()
  return text.count('stablehlo.while')


def test_auto_block_scan_is_decided_for_the_platform_it_is_lowered_for():
  """block_scan='auto' exported on this CPU host: for cuda it is the rolled program (the
  stage's scan a while loop), for cpu the unrolled one (no loop), for both platforms both
  behind a platform switch. The reversible gradient (custom_vjp, scans in the forward and
  the backward) keeps the choice too (on CPU, threefry's rounds are while loops as well)."""
  assert _exported_whiles('auto', ('cuda',), 'invert') == 1    # as 'rolled'
  assert _exported_whiles('auto', ('cpu',), 'invert') == 0     # as 'unrolled'
  assert _exported_whiles('auto', ('cpu', 'cuda'), 'invert') == 1
  assert _exported_whiles('auto', ('cuda',), 'grad') == 2      # the forward's and the backward's
  assert _exported_whiles('auto', ('cpu',), 'grad') == _exported_whiles('unrolled', ('cpu',), 'grad')


@pytest.mark.compile_heavy   # a step of .ci/run of its own (setup.cfg), not the README's command
def test_partly_unrolled_block_scan_loops_fewer_times_with_the_same_numbers():
  """block_scan='unroll:2' on a stage scanning 4 alike blocks: for cuda one while loop whose
  body runs two blocks' F (rolled: one); on this CPU the same inversion as 'rolled',
  bit for bit. A malformed value is refused naming the form."""
  def net(block_scan):
    c = presets.base()
    c.input_shape, c.blocks, c.strides, c.widths = (8, 8, 3), (1, 5), (1, 2), (8, 32)
    c.num_classes, c.block_scan = 5, block_scan
    return irevnet_jax.build(c)

  rolled, unrolled = net('rolled'), net('unroll:2')
  x = jax.random.normal(jax.random.PRNGKey(1), (2, *rolled.input_shape))
  variables = rolled.init(jax.random.PRNGKey(0), x)
  z = jax.random.normal(jax.random.PRNGKey(2), (2, *rolled.z_shape))
  assert (rolled.invert(variables, z) == unrolled.invert(variables, z)).all()

  def while_loops_and_block_calls(model):
    spec = jax.ShapeDtypeStruct(z.shape, jnp.float32)
    text = jax.export.export(jax.jit(model.invert), platforms=('cuda',))(variables, spec)
    text = text.mlir_module()
    return text.count('stablehlo.while'), text.count('call @closed_call(')   # a block's F

  (loops, calls), (loops_2, calls_2) = map(while_loops_and_block_calls, (rolled, unrolled))
  assert loops == loops_2 == 1
  assert (calls, calls_2) == (1, 2)   # the loop's body runs one F, then two
  with pytest.raises(ValueError, match=r"'unroll:<k>'"):
    net('unroll:one')
