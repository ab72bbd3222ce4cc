"""The config a run was trained with, and the accepted changes of it on resume.

    <workdir>/config.json            the config of the run (the latest, when it changed)
    <workdir>/config_history.jsonl   earlier configs, one JSON line per accepted change

A resume may change only the fields in `CHANGEABLE_FIELDS` (how often to log, evaluate
and save; where the data is); any other change is refused unless allowed, and then
recorded in the history when the resumed run first saves (`check_config_record` ->
`ConfigRecord.commit`), so a run that stops before leaves config.json as it was.
"""
import datetime
import json
from typing import Dict, Optional, Tuple

import ml_collections

from irevnet_jax.errors import UserError
from irevnet_jax.run.paths import join, read_text, resolve, write_file

CONFIG_FILE = 'config.json'
HISTORY_FILE = 'config_history.jsonl'

# Fields a resumed run may change freely: they do not change what is trained.
CHANGEABLE_FIELDS = frozenset({
    'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
    'async_checkpoints', 'eval_batch_size', 'eval_inversion_examples', 'num_devices',
    'parallel', 'model.backprop', 'model.block_scan', 'model.fused_bn_relu',
    'model.fused_kernel', 'dataset.data_dir', 'dataset.manual_dir', 'dataset.cpu_threads',
    'device_memory_gib',
})


def _tuples(value):
  """JSON lists back to the tuples that configs use."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def write_config(workdir: str, config: ml_collections.ConfigDict):
  """Writes `<workdir>/config.json` (primary process only)."""
  write_file(workdir, CONFIG_FILE, config.to_json(indent=2, sort_keys=True))


def read_config(workdir: str, missing_ok: bool = False) -> Optional[ml_collections.ConfigDict]:
  """The run's config.json; a UserError if it is missing (None if `missing_ok`) or invalid."""
  path = join(resolve(workdir), CONFIG_FILE)
  text = read_text(path)
  if text is None:
    if missing_ok:
      return None
    raise UserError(f'No {CONFIG_FILE} in {workdir!r}: is it the workdir of a run '
                    f'(python -m experiments.main --workdir=...)?')
  try:
    return ml_collections.ConfigDict(_tuples(json.loads(text)))
  except (ValueError, TypeError, AttributeError) as error:
    raise UserError(f'{path} is not a valid config ({error}); restore it (earlier ones are '
                    f'in {HISTORY_FILE} if the config changed), or delete it and rerun '
                    f'experiments.main, which writes the config of its command.') from error


def _flat(tree, prefix=''):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def config_changes(old, new) -> Dict[str, Tuple[object, object]]:
  """{field: (old value, new value)} of the fields that differ and matter for training.
  Fields present on one side only (added or retired by a code change) are not compared."""
  old_flat = _flat(json.loads(old.to_json()))
  new_flat = _flat(json.loads(new.to_json()))
  return {k: (old_flat[k], new_flat[k]) for k in sorted(old_flat.keys() & new_flat.keys())
          if old_flat[k] != new_flat[k] and k not in CHANGEABLE_FIELDS}


def _is_last_record(history_text: str, record: dict) -> bool:
  """Whether the history's last line is `record` but for its time: the same change,
  written by a commit that stopped before it replaced config.json."""
  lines = history_text.strip().splitlines()
  try:
    last = json.loads(lines[-1]) if lines else None
  except ValueError:
    return False
  if not isinstance(last, dict):
    return False
  record = json.loads(json.dumps(record))    # as it reads back (lists, not tuples)
  return ({k: v for k, v in last.items() if k != 'time'} ==
          {k: v for k, v in record.items() if k != 'time'})


class ConfigRecord:
  """What `check_config_record` decided: `commit()` writes it (primary process only)."""

  def __init__(self, workdir, config, resume_step, history: Optional[dict]):
    self.workdir, self.config, self.resume_step = workdir, config, resume_step
    self._history = history
    self.committed = False

  def commit(self):
    """Appends the replaced config to the history (when it changed) and writes config.json;
    once."""
    if self.committed:
      return
    if self._history is not None:   # rewritten whole: object stores cannot append
      kept = read_text(join(self.workdir, HISTORY_FILE)) or ''
      if not _is_last_record(kept, self._history):   # not yet there from a killed commit
        write_file(self.workdir, HISTORY_FILE,
                   kept + json.dumps(self._history, sort_keys=True) + '\n')
    write_config(self.workdir, self.config)
    self.committed = True


def check_config_record(workdir: str, config, resume_step: Optional[int],
                        allow_change: bool) -> ConfigRecord:
  """Checks a resumed run's config against config.json; writes nothing.

  A resume with changed training fields raises UserError listing them, unless
  `allow_change`; then the returned record's `commit()` (called when the resumed run
  first saves, so a run that stops before leaves config.json as it was) puts the old
  config in config_history.jsonl (with the step and the changes) and replaces config.json.
  """
  if resume_step is None:
    return ConfigRecord(workdir, config, resume_step, None)
  old = read_config(workdir, missing_ok=True)
  if old is None:
    return ConfigRecord(workdir, config, resume_step, None)
  changes = config_changes(old, config)
  if changes and not allow_change:
    listed = '; '.join(f'{k}: {a!r} -> {b!r}' for k, a, b in
                       ((k, *v) for k, v in changes.items()))
    raise UserError(f'Resuming {workdir} at step {resume_step} with changed training '
                    f'field(s): {listed}. Pass --allow_config_change to go on with the new '
                    f'values (the old config is kept in {HISTORY_FILE}), undo the change, '
                    f'or use a new --workdir.')
  history = None
  if changes:
    history = {'replaced_at_step': resume_step,
               'time': datetime.datetime.now().isoformat(timespec='seconds'),
               'changes': {k: list(v) for k, v in changes.items()},
               'config': json.loads(old.to_json())}
  return ConfigRecord(workdir, config, resume_step, history)
