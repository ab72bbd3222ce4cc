"""Ordered cross-device sums (irevnet_jax.model.collectives): their bits, their gradient, and their
cost read from the lowered HLO of the runner's real train step at 4, 6 and 8 devices."""
import functools
import re

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec
import numpy as np
import pytest

from benchmarks import collectives as bench
from irevnet_jax.model import collectives, norm

COLLECTIVE = re.compile(r' (all-reduce|all-gather|all-to-all|collective-permute|'
                        r'reduce-scatter)\(')


def _tree(num_devices, rng):
  """Per-device leaves of several dtypes and sizes: one f32 buffer over GATHER_BYTES, with
  values across 6 orders of magnitude (the order of addition shows in the last bits)."""
  scales = np.logspace(-3, 3, num_devices, dtype=np.float32)
  big = rng.standard_normal((num_devices, 130, 131)).astype(np.float32)
  return {'big': big * scales[:, None, None],
          'small': rng.standard_normal((num_devices, 7)).astype(np.float32) * scales[:, None],
          'half': rng.standard_normal((num_devices, 5)).astype(jnp.bfloat16),
          'count': np.arange(num_devices * 3, dtype=np.int32).reshape(num_devices, 3)}


def _index_ordered_on_host(rows):
  """The fixed order of collectives.index_ordered_sum, in numpy (same dtype)."""
  parts = list(rows)
  while len(parts) > 1:
    parts = [parts[i] + parts[i + 1] for i in range(0, len(parts) - 1, 2)] + \
            parts[len(parts) - len(parts) % 2:]
  return parts[0]


@pytest.mark.parametrize('num_devices', [4, 3])
def test_ordered_sum_adds_in_index_order_with_the_same_bits_every_way(num_devices, monkeypatch):
  tree = _tree(num_devices, np.random.default_rng(0))
  devices = jax.local_devices()[:num_devices]
  run = lambda: jax.pmap(lambda t: collectives.ordered_sum(t, 'i'), axis_name='i',
                         devices=devices)(tree)
  scattered = run()                                     # 'big': all_to_all + all_gather
  monkeypatch.setattr(collectives, 'GATHER_BYTES', 2**40)
  gathered = run()                                      # everything: one all_gather
  for key, leaf in tree.items():
    out = np.asarray(scattered[key])
    expected = _index_ordered_on_host(leaf)
    assert out.dtype == leaf.dtype
    for row in out:                                     # every device: the same bits,
      np.testing.assert_array_equal(row, expected)      # those of the fixed order
    np.testing.assert_array_equal(np.asarray(gathered[key]), out)
  exact = tree['big'].astype(np.float64).sum(0)
  np.testing.assert_allclose(np.asarray(scattered['big'][0]), exact, rtol=1e-4, atol=1e-3)


def test_the_number_of_collectives_does_not_grow_with_the_number_of_leaves():
  def count(num_leaves, ordered):
    tree = [jnp.ones((4, 30000 // num_leaves + 1)) for _ in range(num_leaves)]
    mean = functools.partial(collectives.mean, axis_name='i', ordered=ordered)
    text = jax.pmap(mean, axis_name='i').lower(tree).as_text(dialect='hlo')
    return len(COLLECTIVE.findall(text))
  assert count(3, True) == count(100, True) == 2         # all_to_all + all_gather
  assert count(100, False) > count(3, False)             # native: one all-reduce per leaf


def _grad_through_mean(mapped, ordered):
  """Gradient of sum_devices(w_d . mean_devices(x_d)^2) w.r.t. x, per device, as a
  synchronised BN differentiates its statistics (pmap semantics)."""
  def per_device(x, w):
    return jax.grad(lambda x: jnp.sum(w * collectives.mean(x, 'i', ordered) ** 2))(x)
  return mapped(per_device)


def test_gradient_of_the_ordered_mean_is_the_ordered_mean_of_cotangents():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((4, 20000)).astype(np.float32)
  w = rng.standard_normal((4, 20000)).astype(np.float32)
  mesh = Mesh(np.array(jax.local_devices()[:4]), ('i',))
  spec = PartitionSpec('i')
  backends = {
      'pmap': lambda f: jax.pmap(f, axis_name='i')(x, w),
      'shard_map': lambda f: jax.jit(jax.shard_map(
          lambda a, b: f(a[0], b[0])[None], mesh=mesh, in_specs=(spec, spec),
          out_specs=spec, check_vma=False))(x, w)}
  expected = 2 * x.mean(0) * w.sum(0) / 4      # d/dx_d of sum_e w_e (mean x)^2
  for name, mapped in backends.items():
    ordered = np.asarray(_grad_through_mean(mapped, True))
    native = np.asarray(_grad_through_mean(mapped, False))
    for row in ordered:
      np.testing.assert_array_equal(row, ordered[0])
      np.testing.assert_allclose(row, expected, rtol=2e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(ordered, native, rtol=2e-5, atol=1e-6, err_msg=name)
  # The backward pass has no native reduction either: only ordered data movement.
  lowered = jax.pmap(lambda a, b: jax.grad(
      lambda a: jnp.sum(b * collectives.ordered_mean(a, 'i') ** 2))(a), axis_name='i')
  kinds = set(COLLECTIVE.findall(lowered.lower(x, w).as_text(dialect='hlo')))
  assert kinds == {'all-to-all', 'all-gather'}, kinds


def test_batchnorm_statistics_take_one_collective_and_follow_the_reductions_block():
  x = jnp.ones((4, 2, 3, 3, 8))
  module = norm.BatchNorm(use_running_average=False, axis_name='i')
  variables = norm.BatchNorm(use_running_average=False).init(jax.random.PRNGKey(0), x[0])

  def kinds(ordered):
    def apply(shard):
      with collectives.reductions(ordered):
        return jax.grad(lambda s: module.apply(variables, s, mutable=['batch_stats'])[0].sum())(
            shard)
    return COLLECTIVE.findall(jax.pmap(apply, axis_name='i').lower(x).as_text(dialect='hlo'))
  assert kinds(True) == ['all-gather', 'all-gather']          # forward, backward
  assert kinds(False) == ['all-reduce', 'all-reduce']


@pytest.fixture(scope='module')
def hlo_rows():
  """benchmarks.collectives rows (ordered and native summaries of the real train step) at
  4 devices (this process, conftest) and at 6 and 8 (a subprocess with 8 devices, started
  first so that it runs while this process lowers; a pmap over 6 of its devices lowers to
  the very HLO of a process with 6)."""
  with bench.start((6, 8)) as others:
    rows = [bench.measure(4)]
    rows += others.result()
  return rows


def test_train_step_collective_bytes_are_those_of_the_native_all_reduce(hlo_rows):
  assert [row['devices'] for row in hlo_rows] == [4, 6, 8]
  for row in hlo_rows:
    ordered, native = row['ordered'], row['native']
    # One block per stage (11.6M parameters): ~66-77 MiB per device per step natively.
    assert ordered['bytes'] <= 1.15 * native['bytes'], bench.table([row])
    # Lowered in one process, one after the other: BN follows each step's reductions block.
    assert set(ordered['kinds']) == {'all-to-all', 'all-gather'}, ordered['kinds']
    assert set(native['kinds']) == {'all-reduce'}, native['kinds']
    # Gradients and metrics: 2 collectives for 38 leaves (natively one per leaf); BN: one
    # collective per layer per pass either way.
    assert ordered['scope_count'] == 2 and native['scope_count'] == row['leaves'] + 2
    assert ordered['count'] - 2 == native['count'] - native['scope_count'] > 0
