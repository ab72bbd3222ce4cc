"""A network's forward and invert as `jax.export` artifacts that any JAX program can call.

    artifacts = export.export_net(net, variables)          # {'forward', 'invert'}: jax.export.Exported
    export.save_artifacts(artifacts, variables, directory)  # or: export.export_run(workdir, directory)

A saved directory holds

    forward.jax_export   (weights, x (b, H, W, C) float32) -> (logits (b, K), z (b, H', W', C'))
    invert.jax_export    (weights, z (b, H', W', C') float32) -> x (b, H, W, C)   [i-RevNet only]
    weights.npz          the variables as one flat dict {'params/stage_0/...': array}
    manifest.json        shapes, dtypes, platforms, the run and step, how to call

The batch size b is symbolic: one artifact serves every batch size. The functions
are the eval-mode network (running BN statistics) at float32 and convolution
precision 'highest' (what exact inversion needs; `Net.exact()`), lowered for every
platform asked for (default cpu, cuda, tpu). Loading needs jax and numpy only:

    import numpy as np
    from jax import export
    weights = dict(np.load('weights.npz'))
    invert = export.deserialize(open('invert.jax_export', 'rb').read())
    x = invert.call(weights, z)

Weights travel beside the functions, not inside them, so one artifact can be
re-used with other weights of the same layout (fine-tuned, another checkpoint).
`model.block_scan='auto'` is decided per platform of the artifact, not by the exporting
host: unrolled scans in its cpu program, rolled in its cuda and tpu ones (both are
staged, behind a platform switch; `reversible._scan`).
"""
import json
import os
from typing import Dict, Optional, Sequence

from flax import traverse_util
import jax
import jax.numpy as jnp
from jax import export as jax_export
import numpy as np

from irevnet_jax import nets
from irevnet_jax.errors import UserError
from irevnet_jax.run import paths

PLATFORMS = ('cpu', 'cuda', 'tpu')
FUNCTIONS = ('forward', 'invert')
WEIGHTS_FILE = 'weights.npz'
MANIFEST_FILE = 'manifest.json'
SEPARATOR = '/'


def flat_weights(variables) -> Dict[str, np.ndarray]:
  """{'params': {...}, 'batch_stats': {...}} -> {'params/a/b': array}: what weights.npz holds."""
  flat = traverse_util.flatten_dict(variables, sep=SEPARATOR)
  return {key: np.asarray(value) for key, value in flat.items()}


def _nested(weights):
  return traverse_util.unflatten_dict(dict(weights), sep=SEPARATOR)


def export_net(net, variables, platforms: Sequence[str] = PLATFORMS
               ) -> Dict[str, jax_export.Exported]:
  """The eval-mode forward (and invert, for an invertible net) of `net`, lowered for
  `platforms` with a symbolic batch size. Build `net` at float32 / 'highest'
  (`net.exact()`) for exact inversion; the artifact computes what `net` computes."""
  platforms = tuple(platforms)
  unknown = sorted(set(platforms) - set(PLATFORMS))
  if unknown or not platforms:
    raise UserError(f'platforms={platforms}: choose from {PLATFORMS}, e.g. '
                    f'platforms=("cpu", "cuda").')
  batch, = jax_export.symbolic_shape('b')
  weights = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                   flat_weights(variables))
  stream = jnp.float64 if net.arch.dtype == 'float64' else jnp.float32
  x_spec = jax.ShapeDtypeStruct((batch, *net.input_shape), stream)
  functions = {'forward': (lambda w, x: net.forward(_nested(w), x), x_spec)}
  if net.invertible:
    z_spec = jax.ShapeDtypeStruct((batch, *net.z_shape), stream)
    functions['invert'] = (lambda w, z: net.invert(_nested(w), z), z_spec)
  return {name: jax_export.export(jax.jit(fn), platforms=platforms)(weights, spec)
          for name, (fn, spec) in functions.items()}


def save_artifacts(artifacts, variables, directory: str, info: Optional[dict] = None):
  """Writes `artifacts` (from `export_net`), weights.npz and manifest.json to `directory`.
  Everything is serialised before anything is written, and each file is written under a
  temporary name and renamed: a failure leaves no file half-written."""
  try:
    serialized = {f'{name}.jax_export': exported.serialize()
                  for name, exported in artifacts.items()}
  except ImportError as error:   # jax declares flatbuffers in an extra only
    raise UserError(f"jax.export's serialisation needs flatbuffers ({error}): "
                    f'pip install flatbuffers (or this package again: pip install -e .).'
                    ) from error
  weights = flat_weights(variables)
  manifest = dict(info or {})
  manifest.update(
      jax_version=jax.__version__,
      platforms=list(next(iter(artifacts.values())).platforms),
      functions={name: {'inputs': ['weights', _describe(e.in_avals[-1])],
                        'outputs': [_describe(a) for a in e.out_avals]}
                 for name, e in artifacts.items()},
      weights={'file': WEIGHTS_FILE, 'entries': len(weights),
               'parameters': int(sum(a.size for k, a in weights.items()
                                     if k.startswith('params' + SEPARATOR)))},
      call="weights = dict(np.load('weights.npz')); "
           "fn = jax.export.deserialize(open('<name>.jax_export', 'rb').read()); "
           "fn.call(weights, array)")
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as error:
    raise paths.cannot_write(directory, error) from error
  for name, data in serialized.items():
    paths.write_local(os.path.join(directory, name), lambda f, data=data: f.write(data))
  paths.write_local(os.path.join(directory, WEIGHTS_FILE), lambda f: np.savez(f, **weights))
  paths.write_local(os.path.join(directory, MANIFEST_FILE),
                    lambda f: f.write(json.dumps(manifest, indent=2).encode()))
  return manifest


def _describe(aval) -> str:
  return f'{aval.dtype}[{", ".join(str(d) for d in aval.shape)}]'


def export_run(workdir: str, directory: str, step: Optional[int] = None,
               platforms: Sequence[str] = PLATFORMS, overwrite: bool = False) -> dict:
  """A run's checkpoint (latest, or `step`) -> `directory` as `save_artifacts` writes it.
  Returns the manifest."""
  from irevnet_jax.run import checkpoints  # pylint: disable=g-import-not-at-top
  if os.path.exists(os.path.join(directory, MANIFEST_FILE)) and not overwrite:
    raise UserError(f'{directory} already holds an export: choose another --output '
                    f'or pass --overwrite.')
  config, variables, step = checkpoints.load_run(workdir, step)
  net = nets.build(config.model).exact()
  artifacts = export_net(net, variables, platforms)
  info = {'workdir': workdir, 'step': step, 'model': net.arch.describe().splitlines()[0]}
  return save_artifacts(artifacts, variables, directory, info)
