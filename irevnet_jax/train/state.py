"""The train state: a dict {'step', 'params', 'batch_stats', 'opt_state', 'rng'}.

It is host numpy in checkpoints and between runs, and lives on the devices
during training (`irevnet_jax.train.parallel` puts it there).
"""
import jax
import jax.numpy as jnp
import numpy as np

from irevnet_jax.model import compiler_options


def initial_keys(seed: int):
  """(parameter init key, the train state's dropout `rng`) of a fresh run with `seed`."""
  init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
  return init_key, dropout_key


def _initializer(net, tx):
  """seed -> a fresh train state (traceable)."""
  def init(seed):
    init_key, dropout_key = initial_keys(seed)
    x = jnp.zeros((1, *net.input_shape), jnp.float32)
    variables = net.init(init_key, x)
    return {'step': jnp.zeros((), jnp.int32), 'params': variables['params'],
            'batch_stats': variables['batch_stats'],
            'opt_state': tx.init(variables['params']), 'rng': dropout_key}
  return init


def state_shapes(net, tx) -> dict:
  """The train state's `jax.ShapeDtypeStruct`s (nothing computed or allocated)."""
  return jax.eval_shape(_initializer(net, tx), 0)


def host_zeros(shapes) -> dict:
  """Numpy zeros of a state's `state_shapes`: the target a checkpoint is restored into, made
  without running (or compiling) the initialisers."""
  return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def create_state(net, tx, seed: int) -> dict:
  """A fresh host train state, the same on every process for the same seed."""
  init = _initializer(net, tx)
  lowered = jax.jit(init, static_argnums=0).lower(seed)
  try:  # runs once: compile without backend optimisation (the same values, a shorter compile)
    compiled = lowered.compile(compiler_options=compiler_options.NO_BACKEND_OPTIMIZATION)
  except Exception:  # pylint: disable=broad-except
    compiled = lowered.compile()
  return jax.device_get(compiled())


def state_from_variables(net, tx, variables: dict, seed: int) -> dict:
  """A host train state at step 0 that holds `variables` ({'params', 'batch_stats'}, e.g.
  converted from another framework): a fresh optimizer state and the `rng` of a fresh run
  with `seed`; tree and dtypes those of `host_zeros(state_shapes(net, tx))`, the target a
  resumed run restores. RuntimeError if `variables` do not fit `net`."""
  target = host_zeros(state_shapes(net, tx))
  pieces = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
  if (jax.tree_util.tree_structure(pieces) !=
      jax.tree_util.tree_structure({k: target[k] for k in pieces})):
    raise RuntimeError('irevnet_jax bug: the variables do not have the tree of the train state.')
  cast = lambda tree, like: jax.tree_util.tree_map(
      lambda v, t: np.asarray(v, dtype=t.dtype), tree, like)
  params = cast(pieces['params'], target['params'])
  state = {'step': np.zeros((), target['step'].dtype), 'params': params,
           'batch_stats': cast(pieces['batch_stats'], target['batch_stats']),
           'opt_state': jax.device_get(tx.init(params)),
           'rng': np.asarray(initial_keys(seed)[1])}
  return cast(state, target)


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
