"""The authors' checkpoint files <-> run directories (`experiments.import_weights`,
`experiments.export_weights`).

    from irevnet_jax.interop import runs
    runs.import_weights('ILSVRC_trained_irevnet.pth.tar', config, 'runs/released')
    runs.export_weights('runs/released', 'exported.pth.tar')

An imported run is an ordinary run directory at step 0, so that every command
reads it unchanged (`experiments.main` fine-tunes it from step 0;
`experiments.evaluate`, `experiments.analyze` and the export read it):

    <workdir>/config.json            the experiment config given to the import
    <workdir>/checkpoints/0/         a full train state: params and batch_stats from the
                                     file, a fresh optimizer state, rng from config.seed
    <workdir>/imported_from.json     the file (path, SHA-256, time) and the BatchNorm
                                     counters (num_batches_tracked) it held

The counters are the only part of the authors' state dict that irevnet_jax
variables do not hold. The export writes them back as the file had them plus
the training steps taken since the import (PyTorch adds one per training
batch); a run trained here exports its step.
"""
import datetime
import hashlib
import importlib.util
import json
import os
from typing import NamedTuple, Optional

import numpy as np

from irevnet_jax import nets
from irevnet_jax.errors import UserError
from irevnet_jax.model import precision
from irevnet_jax.run import checkpoints, paths, run_config, workdir as workdir_lib, workdir_lock
from irevnet_jax.interop import authors, state_dict_files
from irevnet_jax.train import config as config_lib
from irevnet_jax.train import optimizer, state as state_lib

IMPORT_RECORD = 'imported_from.json'
COUNTER = '.num_batches_tracked'


class ImportResult(NamedTuple):
  workdir: str               # absolute path
  step: int                  # of the checkpoint written (0)
  num_entries: int           # state-dict entries read
  num_parameters: int        # in the weights and biases


class ExportResult(NamedTuple):
  path: str
  step: int                  # of the checkpoint exported
  num_entries: int
  num_parameters: int
  counters: Optional[int]    # the num_batches_tracked written (the first one), or None


def checkpoint_steps(workdir: str) -> list:
  """Steps of the checkpoints in `<workdir>/checkpoints` (Orbax names them by step); [] if
  none. `workdir`: a local path or a URL."""
  directory = paths.join(paths.resolve(workdir), checkpoints.CHECKPOINT_DIR)
  return sorted(int(name) for name in paths.list_names(directory) if name.isdigit())


def _check_new_run_dir(workdir: str):
  """A UserError naming the fix when `workdir` cannot take an import; creates nothing."""
  if paths.kind(paths.resolve(workdir)) == 'file':
    raise UserError(f'--workdir={workdir} is a file, not a directory; pass a new '
                    f'directory.')
  steps = checkpoint_steps(workdir)
  if steps:
    raise UserError(
        f'--workdir={workdir} already holds checkpoints (steps {steps}); import into a new '
        f'--workdir, or delete {paths.join(workdir, checkpoints.CHECKPOINT_DIR)} to replace '
        f'that run.')


def _parameter_count(state_dict) -> int:
  return sum(int(np.prod(np.shape(v))) for k, v in state_dict.items()
             if k.endswith(('.weight', '.bias')))


def train_state(config, variables) -> dict:
  """A full host train state {'step', 'params', 'batch_stats', 'opt_state', 'rng'} holding
  `variables` ({'params', 'batch_stats'} of `config.model`): step 0, the optimizer state
  of a fresh start, the rng of a fresh run with `config.seed`; what `experiments.main`
  restores for `config`."""
  net = nets.build(precision.train_model_config(config.model, config.train_dtype,
                                                    config.train_precision))
  # The optimizer's initial state does not depend on the schedule's values.
  tx = optimizer.make_optimizer(config, optimizer.learning_rate_schedule(config, 1, 1.0))
  return state_lib.state_from_variables(net, tx, variables, int(config.seed))


def _counters(state_dict) -> dict:
  """{key without 'module.': int} of the file's num_batches_tracked entries."""
  return {key: int(np.asarray(value)) for key, value in authors.strip_prefix(state_dict).items()
          if key.endswith(COUNTER)}


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def import_weights(weights_path: str, config, workdir: str,
                   weights_only: bool = True) -> ImportResult:
  """Converts the authors' checkpoint `weights_path` (.npz, .pth, .pth.tar) for the
  experiment config `config` into a new run directory `workdir` (see the module
  docstring). Everything is read and converted before anything is written: on an error
  (a file that is not a checkpoint, PyTorch missing for a .pth.tar, keys or shapes that
  do not fit `config.model`, a workdir that already holds checkpoints or is in use) the
  workdir is left as it was. `weights_only=False` lets torch.load unpickle any object
  (only for a file you trust).
  """
  weights_path = os.fspath(weights_path)
  if not os.path.isfile(weights_path):
    raise UserError(f'--weights={weights_path}: no such file.')
  config_lib.check_config(config)
  _check_new_run_dir(workdir)
  state_dict = state_dict_files.load_state_dict(weights_path, weights_only=weights_only)
  variables = authors.to_variables(state_dict, config.model)
  state = train_state(config, variables)
  record = {'source': os.path.abspath(weights_path), 'sha256': _sha256(weights_path),
            'imported_at': datetime.datetime.now().isoformat(timespec='seconds'),
            'step': 0, 'num_batches_tracked': _counters(state_dict)}

  path = workdir_lib.check_workdir(workdir)
  lock = workdir_lock.WorkdirLock(path)
  try:
    _check_new_run_dir(path)      # again, now that no run can start in it
    run_config.write_config(path, config)
    paths.write_file(path, IMPORT_RECORD, json.dumps(record, indent=2, sort_keys=True))
    checkpointer = checkpoints.Checkpointer(path, keep=int(config.keep_checkpoints),
                                            use_async=False)
    try:
      checkpointer.save(0, state)
    finally:
      checkpointer.close()
  finally:
    lock.release()
  return ImportResult(path, 0, len(state_dict), _parameter_count(state_dict))


def read_import_record(workdir: str) -> Optional[dict]:
  """`<workdir>/imported_from.json`, or None for a run trained here."""
  text = paths.read_text(paths.join(paths.resolve(workdir), IMPORT_RECORD))
  return None if text is None else json.loads(text)


def export_counters(workdir: str, step: int):
  """The num_batches_tracked to export at `step`, as `authors.from_variables` takes it: a
  template {key: count} for an imported run (the file's counts plus the steps trained
  since; entries the file lacked stay out), else the int `step`."""
  record = read_import_record(workdir)
  if record is None:
    return int(step)
  trained = int(step) - int(record.get('step', 0))
  return {key: count + trained for key, count in record['num_batches_tracked'].items()}


def _check_output(output: str, overwrite: bool):
  """A UserError (PyTorchMissingError: also an ImportError) before anything is read or
  written."""
  if not output.endswith(('.npz',) + state_dict_files.TORCH_SUFFIXES):
    raise UserError(f'--output={output}: use a name ending in .npz (no PyTorch needed), '
                    f".pth.tar (the authors' checkpoint format) or .pth / .pt (a bare state "
                    f'dict).')
  if output.endswith(state_dict_files.TORCH_SUFFIXES) and importlib.util.find_spec(
      'torch') is None:
    raise state_dict_files.PyTorchMissingError(
        f'Writing {output!r} (a PyTorch file) needs PyTorch, which is not installed. Install '
        f'the optional extra: {state_dict_files.TORCH_EXTRA} (the CPU build suffices), or '
        f'write a .npz instead (no PyTorch needed).')
  if os.path.exists(output) and not overwrite:
    raise UserError(f'--output={output} exists; pass --overwrite to replace it, or '
                    f'choose another --output.')


def export_weights(workdir: str, output: str, step: Optional[int] = None,
                   prefix: str = authors.PREFIX, overwrite: bool = False) -> ExportResult:
  """Writes the checkpoint `step` (default: the latest) of the run in `workdir` as the
  authors' state dict: float32, their key order and layout, keys prefixed `prefix`
  ('module.' as their scripts save; '' for a bare iRevNet), num_batches_tracked from
  `export_counters`. The suffix of `output` picks the format
  (`state_dict_files.save_state_dict`): .npz, .pth.tar (their checkpoint dict, for their
  --resume), .pth / .pt (a bare state dict). Nothing is written on an error."""
  output = os.fspath(output)
  _check_output(output, overwrite)
  config, variables, step = checkpoints.load_run(workdir, step)
  counters = export_counters(workdir, step)
  state_dict = authors.from_variables(variables, config.model, prefix=prefix,
                                      num_batches_tracked=counters, dtype=np.float32)
  if os.path.dirname(output):
    os.makedirs(os.path.dirname(output), exist_ok=True)
  state_dict_files.save_state_dict(output, state_dict)
  written = [int(v) for k, v in state_dict.items() if k.endswith(COUNTER)]
  return ExportResult(output, step, len(state_dict), _parameter_count(state_dict),
                      written[0] if written else None)
