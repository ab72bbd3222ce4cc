"""What one device computes in one training or evaluation step.

The steps see this device's shard of a global batch and use collectives by
axis name only (`AXIS`), so `jax.pmap` and `jax.jit` + `shard_map` (with
`check_vma=False`, whose semantics are pmap's) wrap them unchanged
(`irevnet_jax.train.parallel`). Cross-device means are `collectives.mean`:
with `ordered=True` their bits do not depend on the process layout, at a native
all-reduce's cost. Each step runs inside `collectives.reductions(ordered)`, so
synchronised BN statistics follow the same choice. The train step reduces the
gradients and metrics together, in one buffer per dtype (scope 'gradient_mean'
in the HLO's op names).

Images arrive as uint8 (B, H, W, C) and are normalised here, on the device:
x = (image - pixel_mean) / pixel_std in float32 (`Normalization`).
"""
from typing import NamedTuple, Tuple

import jax
from jax import lax
import jax.numpy as jnp
import optax

from irevnet_jax.model import collectives

AXIS = 'batch'   # the device axis: gradients, metrics and BN statistics are averaged over it


class Normalization(NamedTuple):
  """Per-channel pixel mean and std, in the units of the source's images (uint8 pixels)."""
  mean: Tuple[float, ...]
  std: Tuple[float, ...]

  def __call__(self, images):
    """uint8 (or float) (B, H, W, C) -> float32 (B, H, W, C)."""
    mean = jnp.asarray(self.mean, jnp.float32)
    std = jnp.asarray(self.std, jnp.float32)
    return (images.astype(jnp.float32) - mean) / std


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_step(state, batch, *, net, tx, schedule, normalize, ordered=True, axis_name=AXIS):
  """One SGD step on this device's shard of the global batch.

  batch: {'image' uint8 (B, H, W, C), 'label' int32 (B,)}. Gradients and metrics are
  averaged over `axis_name`; BN statistics too, when `net` was built with
  bn_axis_name=axis_name. Dropout masks come from (state rng, step, device index).
  Returns (new state, {'loss', 'accuracy', 'learning_rate', 'finite'}); 'finite' is
  True when the loss and every value of the new state (parameters, optimizer state,
  BN statistics) are finite: the loop never saves a state without it.
  """
  with collectives.reductions(ordered):
    return _train_step(state, batch, net, tx, schedule, normalize, ordered, axis_name)


def _train_step(state, batch, net, tx, schedule, normalize, ordered, axis_name):
  dropout_key = jax.random.fold_in(jax.random.fold_in(state['rng'], state['step']),
                                   lax.axis_index(axis_name))
  x = normalize(batch['image'])

  def loss_fn(params):
    variables = {'params': params, 'batch_stats': state['batch_stats']}
    (logits, _), new = net.forward(variables, x, train=True, rngs={'dropout': dropout_key})
    return cross_entropy(logits, batch['label']).mean(), (logits, new['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state['params'])
  step_metrics = {'loss': loss,
                  'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label'])}
  with jax.named_scope('gradient_mean'):
    grads, step_metrics = collectives.mean((grads, step_metrics), axis_name, ordered)
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  new_state = dict(state, step=state['step'] + 1, params=params, batch_stats=batch_stats,
                   opt_state=opt_state)
  step_metrics['learning_rate'] = schedule(state['step'])
  step_metrics['finite'] = jnp.isfinite(step_metrics['loss']) & all_finite(
      (params, opt_state, batch_stats))
  return new_state, step_metrics


def all_finite(tree):
  """A scalar bool: no NaN or infinity in any floating-point leaf of `tree`."""
  flags = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)
           if jnp.issubdtype(leaf.dtype, jnp.floating)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def _top_k_correct(logits, labels, k):
  k = min(k, logits.shape[-1])
  top = lax.top_k(logits, k)[1]
  return jnp.any(top == labels[:, None], axis=-1)


def eval_step(state, batch, *, net, normalize, ordered=True, axis_name=AXIS):
  """Sums of loss and accuracy over this device's masked eval shard, summed over devices.

  One forward pass of `net` (the trained precision) per image. batch: {'image' (B, H, W,
  C), 'label' (B,), 'mask' (B,)}. Returns {'count', 'loss', 'correct', 'correct_top5'}.
  """
  variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
  labels, mask = batch['label'], batch['mask']
  logits, _ = net.forward(variables, normalize(batch['image']))
  sums = {'count': jnp.sum(mask),
          'loss': jnp.sum(cross_entropy(logits, labels) * mask),
          'correct': jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
          'correct_top5': jnp.sum(_top_k_correct(logits, labels, 5) * mask)}
  return collectives.total(sums, axis_name, ordered)


def inversion_step(state, batch, *, exact_net, normalize, ordered=True, axis_name=AXIS):
  """Sums of ||invert(forward(x)) - x||^2 and ||x||^2 over the masked shard, summed over
  devices; `exact_net` computes in float32 (float64) at precision 'highest'.

  batch: {'image' (B, H, W, C), 'mask' (B,)}. Returns {'count', 'error_sq', 'image_sq'}.
  """
  variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
  x, mask = normalize(batch['image']), batch['mask']
  _, z = exact_net.forward(variables, x)
  x_again = exact_net.invert(variables, z)
  per_image = lambda a: jnp.sum(jnp.square(a.astype(jnp.float32)), axis=(1, 2, 3))
  sums = {'count': jnp.sum(mask),
          'error_sq': jnp.sum(per_image(x_again - x) * mask),
          'image_sq': jnp.sum(per_image(x) * mask)}
  return collectives.total(sums, axis_name, ordered)
