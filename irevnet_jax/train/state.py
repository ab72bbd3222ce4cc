"""The train state: a dict {'step', 'params', 'batch_stats', 'opt_state', 'rng'}.

It is host numpy in checkpoints and between runs, and lives on the devices
during training (`irevnet_jax.train.parallel` puts it there).
"""
import jax
import jax.numpy as jnp
import numpy as np


def create_state(net, tx, seed: int, abstract: bool = False) -> dict:
  """A fresh host train state, the same on every process for the same seed.

  abstract=True: numpy zeros of the right shapes and dtypes, without running
  (and compiling) the initialisers: the target for restoring a checkpoint.
  """
  def init(seed):
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
    x = jnp.zeros((1, *net.input_shape), jnp.float32)
    variables = net.init(init_key, x)
    return {'step': jnp.zeros((), jnp.int32), 'params': variables['params'],
            'batch_stats': variables['batch_stats'],
            'opt_state': tx.init(variables['params']), 'rng': dropout_key}
  if abstract:
    shapes = jax.eval_shape(init, seed)
    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  lowered = jax.jit(init, static_argnums=0).lower(seed)
  try:  # runs once: compile without backend optimisation (8x faster to compile on CPU)
    compiled = lowered.compile(compiler_options={'xla_backend_optimization_level': 0})
  except Exception:  # pylint: disable=broad-except
    compiled = lowered.compile()
  return jax.device_get(compiled())


def non_finite_leaves(state: dict, limit: int = 3):
  """Paths (like 'batch_stats/stages_0/first/BatchNorm_0/var') of up to `limit` leaves of a
  host state that hold NaN or infinity; [] when all values are finite."""
  bad = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    leaf = np.asarray(leaf)
    if leaf.dtype.kind == 'f' and not np.isfinite(leaf).all():
      bad.append(jax.tree_util.keystr(path, simple=True, separator='/'))
      if len(bad) >= limit:
        break
  return bad
