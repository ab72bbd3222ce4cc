"""The authors' PyTorch i-RevNet (jhjacobsen/pytorch-i-revnet) <-> irevnet_jax variables.

    import irevnet_jax
    from irevnet_jax.model import presets
    from irevnet_jax.interop import authors

    config = presets.bijective_released()
    state_dict = authors.load_state_dict('ILSVRC_trained_irevnet.pth.tar')   # or an .npz
    variables = authors.to_variables(state_dict, config)
    logits, z = irevnet_jax.build(config).forward(variables, x)   # x NHWC (N, 224, 224, 3)
    authors.save_state_dict('export.pth.tar', authors.from_variables(variables, config))

The model config must give the architecture the file was made with (the
authors' nBlocks, nStrides, nChannels, nClasses, init_ds, in_shape are
model.blocks, .strides, .widths, .num_classes, .init_ds, .input_shape, and
kernels (3, 3, 3) are their code's). Errors say which field differs, with the
value the file implies. The key layout is in `authors_layout`.
"""
import collections
import numbers
from typing import Mapping, Optional, Union

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from irevnet_jax import nets
from irevnet_jax.errors import UserError
from irevnet_jax.model import presets
from irevnet_jax.interop import authors_layout
from irevnet_jax.interop.state_dict_files import (  # noqa: F401  (part of this API)
    CheckpointFormatError, PyTorchMissingError, load_state_dict, save_state_dict)

PREFIX = 'module.'   # what nn.DataParallel puts before every key
SHOWN = 5            # keys listed in an error message before '... and N more'


class StateDictMismatchError(UserError):
  """A state dict (or variables) does not fit a model config: keys or shapes."""


def _some(keys):
  more = f', ... and {len(keys) - SHOWN} more' if len(keys) > SHOWN else ''
  return ', '.join(keys[:SHOWN]) + more


def _model_config(config):
  """A model config; the `model` field of an experiment config is taken as well."""
  if 'model' in config and 'blocks' not in config:
    config = config.model
  if config.get('arch', 'irevnet') != 'irevnet':
    raise UserError(f"The authors' i-RevNet layout needs an i-RevNet model config "
                    f"(model.arch='irevnet'), got model.arch={config.arch!r}.")
  return config


def strip_prefix(state_dict: Mapping) -> 'collections.OrderedDict':
  """Keys without the 'module.' prefix; a checkpoint dict is unwrapped to its 'state_dict'."""
  if isinstance(state_dict.get('state_dict'), Mapping):
    state_dict = state_dict['state_dict']
  out = collections.OrderedDict()
  for key, value in state_dict.items():
    name = key[len(PREFIX):] if key.startswith(PREFIX) else key
    if name in out:
      raise StateDictMismatchError(f'The state dict holds {name!r} twice, with and without '
                                   f'the {PREFIX!r} prefix; keep one of them.')
    out[name] = value
  return out


def _is_abstract(value):
  return isinstance(value, jax.ShapeDtypeStruct)


def _view(value):
  """A numpy array; for a shapes-only leaf a zero-strided one, so nothing is allocated."""
  if _is_abstract(value):
    return np.broadcast_to(np.zeros((), value.dtype), value.shape)
  return np.asarray(value)


def _to_jax_layout(kind, a):
  return a.transpose(2, 3, 1, 0) if kind == 'conv' else a.T if kind == 'dense' else a


def _to_authors_layout(kind, a):
  return a.transpose(3, 2, 0, 1) if kind == 'conv' else a.T if kind == 'dense' else a


def _fix_hint(shapes, config):
  hint = authors_layout.config_hint(shapes, config)
  return hint or (" Check that it is the authors' iRevNet and that the model config has the "
                  'arguments it was built with (nBlocks, nStrides, nChannels, nClasses, init_ds, '
                  'in_shape are model.blocks, .strides, .widths, .num_classes, .init_ds, '
                  '.input_shape).')


def _check_keys(shapes, plan, config):
  allowed = {e.key for e in plan}
  missing = [e.key for e in plan if e.kind != 'count' and e.key not in shapes]
  unexpected = [key for key in shapes if key not in allowed]
  if missing or unexpected:
    parts = ([f'{len(missing)} key(s) missing ({_some(missing)})'] if missing else []) + (
        [f'{len(unexpected)} unexpected key(s) ({_some(unexpected)})'] if unexpected else [])
    raise StateDictMismatchError(f'The state dict does not fit this model config: '
                                 f'{"; ".join(parts)}.{_fix_hint(shapes, config)}')


def _check_shapes(shapes, plan, config):
  wrong = [e for e in plan if e.kind != 'count' and shapes[e.key] != e.shape]
  if wrong:
    lines = [f'{e.key} is {shapes[e.key]} in the file, {e.shape} in this config ({e.what})'
             for e in wrong]
    fields = list(dict.fromkeys(authors_layout.field_for(e, shapes[e.key]) for e in wrong))
    raise StateDictMismatchError(
        f'The state dict does not fit this model config: {len(wrong)} shape(s) differ: '
        f'{_some(lines)}. The field(s) deciding them: {"; ".join(fields)}.'
        f'{_fix_hint(shapes, config)}')


def variable_shapes(model_config) -> dict:
  """{(collection, *path): ShapeDtypeStruct} of a built net's variables (nothing allocated)."""
  net = nets.build(model_config)
  x = jax.ShapeDtypeStruct((1, *net.input_shape), jnp.float32)
  shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)
  return traverse_util.flatten_dict(
      {'params': shapes['params'], 'batch_stats': shapes['batch_stats']})


def _assemble(rows, target):
  """One leaf from its rows ({None: array} or {0: ..., n-1: ...}), in the target's dtype."""
  if any(_is_abstract(r) for r in rows.values()):
    return jax.ShapeDtypeStruct(target.shape, target.dtype)
  if None in rows:
    return np.array(rows[None], dtype=target.dtype)
  return np.stack([rows[r] for r in range(len(rows))]).astype(target.dtype)


def to_variables(state_dict: Mapping, model_config) -> dict:
  """The authors' state dict -> irevnet_jax variables {'params', 'batch_stats'}.

  `state_dict`: name -> array (numpy, or anything `np.asarray` takes; a
  `jax.ShapeDtypeStruct` gives a shapes-only result), keys with or without
  'module.', `num_batches_tracked` entries optional (not used); a whole
  checkpoint dict with a 'state_dict' entry is accepted too. Conv weights
  (O, I, kh, kw) become kernels (kh, kw, I, O), the linear weight (classes, C)
  the kernel (C, classes); a stage's alike blocks are stacked on a leading axis.
  Returns numpy arrays in the model's parameter dtype (float64 for
  model.dtype='float64' with jax_enable_x64, else float32).

  Raises `StateDictMismatchError` (a UserError) naming the missing and
  unexpected keys or the shapes that differ, and the config fields to change.
  """
  config = _model_config(model_config)
  plan = authors_layout.entries(presets.layout(config))
  state_dict = strip_prefix(state_dict)
  shapes = {key: tuple(np.shape(value)) for key, value in state_dict.items()}
  _check_keys(shapes, plan, config)
  _check_shapes(shapes, plan, config)
  rows = collections.defaultdict(dict)
  for e in plan:
    if e.kind != 'count':
      rows[(e.collection,) + e.path][e.row] = _to_jax_layout(e.kind, _view(state_dict[e.key]))
  targets = variable_shapes(config)
  if set(rows) != set(targets):
    raise RuntimeError(f'irevnet_jax bug: the authors\' key layout does not cover this '
                       f'network\'s variables ({sorted(set(rows) ^ set(targets))[:3]}).')
  flat = {path: _assemble(rows[path], target) for path, target in targets.items()}
  for path, target in targets.items():
    if flat[path].shape != target.shape:
      raise RuntimeError(f'irevnet_jax bug: {path} assembled as {flat[path].shape}, '
                         f'the network has {target.shape}.')
  return traverse_util.unflatten_dict(flat)


def _flat_variables(variables, plan):
  """{(collection, *path): numpy or ShapeDtypeStruct leaf}, checked against the plan."""
  flat = traverse_util.flatten_dict({'params': dict(variables['params']),
                                     'batch_stats': dict(variables.get('batch_stats', {}))})
  expected = {(e.collection,) + e.path: e.leaf_shape for e in plan if e.kind != 'count'}
  missing = ['/'.join(p) for p in expected if p not in flat]
  unexpected = ['/'.join(p) for p in flat if p not in expected]
  wrong = [f'{"/".join(p)} is {tuple(np.shape(flat[p]))}, this config needs {shape}'
           for p, shape in expected.items() if p in flat and tuple(np.shape(flat[p])) != shape]
  if missing or unexpected or wrong:
    raise StateDictMismatchError(
        'The variables are not those of this model config (were they made for another '
        f'one?): missing {_some(missing) or "none"}; unexpected {_some(unexpected) or "none"}; '
        f'shapes differing {_some(wrong) or "none"}.')
  return {p: v if _is_abstract(v) else np.asarray(v) for p, v in flat.items()}


def _count_source(num_batches_tracked, abstract):
  """key (without prefix) -> the num_batches_tracked value to write, or None to leave it out."""
  if num_batches_tracked is None:
    return lambda key: None
  if isinstance(num_batches_tracked, Mapping):
    template = strip_prefix(num_batches_tracked)
    return lambda key: np.array(template[key]) if key in template else None
  if isinstance(num_batches_tracked, numbers.Integral) and not isinstance(
      num_batches_tracked, bool):
    if abstract:
      return lambda key: jax.ShapeDtypeStruct((), np.int64)
    return lambda key: np.array(num_batches_tracked, np.int64)
  raise TypeError('num_batches_tracked must be an int, None (leave the entries out) or a '
                  f'template state dict, got {type(num_batches_tracked).__name__}.')


def _export_leaf(kind, leaf, row, dtype):
  value = _to_authors_layout(kind, _view(leaf) if row is None else _view(leaf)[row])
  dtype = value.dtype if dtype is None else np.dtype(dtype)
  if _is_abstract(leaf):
    return jax.ShapeDtypeStruct(value.shape, dtype)
  return np.ascontiguousarray(value, dtype=dtype)


def from_variables(variables: Mapping, model_config, *, prefix: str = PREFIX,
                   num_batches_tracked: Union[int, None, Mapping] = 0,
                   dtype: Optional[np.dtype] = None) -> 'collections.OrderedDict':
  """irevnet_jax variables -> the authors' state dict, in their key order and layout.

  `variables`: {'params', 'batch_stats'} of a net built from `model_config`
  (arrays, or `jax.ShapeDtypeStruct`s for a state dict of shapes).
  `prefix`: put before every key ('module.' as the authors' DataParallel
  scripts save; '' for a bare `iRevNet`). `num_batches_tracked`: the value of
  every BN's counter (an int64 scalar), None to leave the counters out, or a
  template state dict whose counters are copied (and left out where it has
  none). `dtype`: cast the arrays (e.g. np.float32, the authors' dtype);
  None keeps the variables' dtype.
  """
  config = _model_config(model_config)
  plan = authors_layout.entries(presets.layout(config))
  flat = _flat_variables(variables, plan)
  abstract = any(_is_abstract(v) for v in flat.values())
  counts = _count_source(num_batches_tracked, abstract)
  out = collections.OrderedDict()
  for e in plan:
    if e.kind == 'count':
      value = counts(e.key)
    else:
      value = _export_leaf(e.kind, flat[(e.collection,) + e.path], e.row, dtype)
    if value is not None:
      out[prefix + e.key] = value
  return out
