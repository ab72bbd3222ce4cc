"""The training loop: input, model, restore, then steps with logs, evaluations and checkpoints.

    result = train_and_evaluate(config, workdir)   # config: experiments/configs/*.py

Reads top to bottom. A run owns its workdir while it trains (a second run on it
is refused) and resumes from the latest good checkpoint there, refusing changed
training fields unless allowed; SIGTERM (or Ctrl-C) saves and raises
`Preempted`; a non-finite loss or state stops the run without saving that
state; a failed save stops it at once (`checkpoints.CheckpointSaveError`).
"""
import json
import math
import os
import signal
import threading
from typing import Any, Dict, NamedTuple

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np

import irevnet_jax
from irevnet_jax.run import checkpoints, metrics, workdir as workdir_lib
from irevnet_jax.data import input_pipeline
from irevnet_jax.train import config as config_lib
from irevnet_jax.train import evaluate as evaluate_lib
from irevnet_jax.train import parallel, program, state as state_lib, steps


class Preempted(Exception):
  """Raised after SIGTERM or Ctrl-C (or a multi-host preemption notice) once the state is
  saved; `exit_code` is 143 (SIGTERM) or 130 (Ctrl-C)."""

  def __init__(self, step, signum=signal.SIGTERM):
    name = 'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'
    super().__init__(f'Stopped by {name}: saved a checkpoint at step {step}; rerun the same '
                     f'command to resume.')
    self.step = step
    self.exit_code = 128 + int(signum)


class Result(NamedTuple):
  state: Dict[str, Any]        # final host (numpy) train state
  eval_metrics: Dict[str, float]
  step: int


class _StopWatch:
  """Turns SIGTERM and Ctrl-C into a flag read between steps and evaluation batches (single
  process); with several processes, JAX's preemption sync point makes all of them stop at
  the same step (SIGTERM)."""

  def __init__(self):
    self.signum = None
    self._previous = {}
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.signum = signum
    if signum == signal.SIGINT:   # a second Ctrl-C interrupts at once
      signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))

  def stop_now(self) -> bool:
    return self.signum is not None

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          self.signum = signal.SIGTERM
      except RuntimeError:  # no preemption service (jax.distributed not initialised)
        pass
    return self.stop_now()

  def close(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}


def _divisible(field, value, by, what, min_per_device=1):
  if value % by:
    suggestion = config_lib.suggested_batch_size(value, by, min_per_device)
    raise ValueError(
        f'{field}={value} is not divisible by the {by} {what}; use a multiple of {by}, '
        f'e.g. {field}={suggestion}.')


def _due(step, every, total):
  return step == total or (every > 0 and step % every == 0)


MIN_BN_EXAMPLES = config_lib.MIN_BN_EXAMPLES


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False) -> Result:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if any.

  Raises `Preempted` after saving on SIGTERM / Ctrl-C, FloatingPointError (naming
  the step) on a non-finite loss or state without saving that state, and
  ValueError when resuming with changed training fields (unless
  `allow_config_change`: then config_history.jsonl keeps the old config).
  """
  config_lib.check_config(config)
  process_index, process_count = jax.process_index(), jax.process_count()
  is_chief = process_index == 0
  # Only the primary process writes the shared files (lock, config, metrics, checkpoint
  # metadata); the others read the same workdir.
  if not is_chief:
    return _train(config, workdir_lib.resolve(workdir), allow_config_change, process_index,
                  process_count)
  before = workdir_lib.state(workdir)
  workdir = workdir_lib.check_workdir(workdir)
  lock = workdir_lib.WorkdirLock(workdir)
  finished = False
  try:
    result = _train(config, workdir, allow_config_change, process_index, process_count)
    finished = True
    return result
  finally:
    lock.release()
    if not finished:
      workdir_lib.clean_up_refused(workdir, before)   # a refused run leaves nothing behind


def _train(config, workdir, allow_config_change, process_index, process_count) -> Result:
  """`train_and_evaluate` once the workdir is checked and locked."""
  is_chief = process_index == 0

  # Devices and batch sizes.
  devices = parallel.select_devices(int(config.num_devices))
  num_global = len(devices) * process_count
  what = f'devices ({process_count} process(es) x {len(devices)} local devices)'
  _divisible('batch_size', config.batch_size, num_global, what, MIN_BN_EXAMPLES)
  _divisible('eval_batch_size', config.eval_batch_size, num_global, what)
  local_batch = config.batch_size // process_count
  local_eval_batch = config.eval_batch_size // process_count
  per_device = config.batch_size // num_global
  if per_device < MIN_BN_EXAMPLES and is_chief:
    logging.warning('Each device sees %d example(s) per step: BatchNorm statistics over so few '
                    'are noise, and training (and inversion) may fail. Use batch_size >= %d '
                    'or fewer devices (num_devices).', per_device, MIN_BN_EXAMPLES * num_global)

  # Input.
  input_shape = tuple(irevnet_jax.build(config.model).input_shape)   # validates the model
  input_pipeline.check_model_fits(config.dataset, input_shape, config.model.num_classes)
  source = input_pipeline.get_source(config.dataset, input_shape)
  if source.num_classes > config.model.num_classes:
    raise ValueError(f'dataset.name={config.dataset.name!r} has {source.num_classes} classes; '
                     f'set model.num_classes={source.num_classes}.')
  normalization = steps.Normalization(tuple(source.pixel_mean), tuple(source.pixel_std))

  # Model, optimizer and the compiled steps.
  prog = program.build_program(config, source.num_train_examples, normalization, devices)
  backend, total_steps = prog.backend, prog.total_steps

  # State: the latest usable checkpoint, or a fresh start.
  checkpointer = checkpoints.Checkpointer(workdir, keep=int(config.keep_checkpoints),
                                          use_async=bool(config.async_checkpoints))
  restored, restored_step = checkpointer.restore(
      target=state_lib.create_state(prog.train_net, prog.tx, int(config.seed), abstract=True))
  _check_same_step(restored_step)
  if is_chief:   # a refused resume stops here, before it says anything about resuming
    config_record = workdir_lib.check_config_record(workdir, config, restored_step,
                                                     allow_config_change)
    if restored is None:
      config_record.commit()   # a new run; a resumed one commits at its first save
  if restored is not None:
    host_state, start_step = restored, int(restored_step)
    if is_chief:
      logging.info('Resuming from the checkpoint at step %d in %s.', start_step, workdir)
  else:
    host_state, start_step = state_lib.create_state(prog.train_net, prog.tx, int(config.seed)), 0
  if is_chief:
    logging.info('Model: %s\n%d parameters; %d steps of global batch %d on %d device(s) '
                 '(%s, %s), %.1f steps per epoch.', prog.train_net.arch.describe(),
                 irevnet_jax.count_params(prog.train_net), total_steps, config.batch_size,
                 num_global, backend.name, config_lib.resolved_train_dtype(config),
                 prog.steps_per_epoch)
  writer = metrics.MetricWriter(workdir, enabled=is_chief, resume_step=start_step)
  progress = metrics.Progress(start_step, total_steps, enabled=is_chief)

  state = backend.put_state(host_state)
  del host_state
  watch = _StopWatch()
  watch.reached(start_step)   # tells the multi-host preemption service where this run starts
  batches = backend.prefetch(source.train_batches(local_batch, process_index, process_count,
                                                  int(config.seed), start_step))
  pending = []          # (step, per-step metrics on the devices), fetched at log time
  # (step, per-step metrics) fetched since the last train/* record, those of the steps before a
  # resume included, so that the first record after a resume averages the steps it would have.
  unlogged = (_read_unlogged(workdir, start_step) if restored is not None and is_chief else [])
  last_saved = start_step if restored is not None else None
  eval_metrics = {}

  def flush():
    """Fetches pending train metrics (one batched device-to-host fetch for all the steps
    since the last one); stops at the first step whose loss or state is not finite, naming
    it (that state is never saved)."""
    fetched = list(zip([s for s, _ in pending], backend.to_host([m for _, m in pending])))
    pending.clear()
    for s, m in fetched:
      if not m['finite']:
        raise FloatingPointError(_non_finite_message(s, m, backend.to_host(state), last_saved,
                                                     checkpointer.directory))
    unlogged.extend(fetched)
    return fetched

  def save(step):
    """Starts saving the state of `step` in the background: the training thread waits only
    for the device-to-host copy (none on CPU) and Orbax's start of the write."""
    nonlocal last_saved
    if last_saved != step:
      checkpointer.save(step, backend.to_host(state))
      last_saved = step
      if is_chief:
        config_record.commit()   # the config (and its history) goes with the first save
        _write_unlogged(workdir, step, unlogged)

  def run_evaluation():
    return evaluate_lib.evaluate(prog, state, source, local_eval_batch,
                                 int(config.eval_inversion_examples), int(config.seed),
                                 should_stop=watch.stop_now)

  def evaluate_and_record(step):
    metrics_now = run_evaluation()
    writer.write(step, metrics_now)
    if is_chief:
      logging.info('eval at step %d: %s', step,
                   ', '.join(f'{k} {v:.6g}' for k, v in metrics_now.items()))
    return metrics_now

  step = start_step
  try:
    if (restored is not None and 0 < step <= total_steps
        and _due(step, config.eval_every_steps, total_steps)
        and not _evaluated(workdir, step, is_chief)):
      logging.info('Redoing the evaluation at step %d, which was interrupted.', step)
      eval_metrics = evaluate_and_record(step)
    elif step >= total_steps:
      logging.info('The run in %s is already at step %d of %d.', workdir, step, total_steps)
      eval_metrics = run_evaluation()
    while step < total_steps:
      state, step_metrics = prog.train_step(state, next(batches))
      step += 1
      pending.append((step, step_metrics))
      checkpointer.check()   # a failed background save stops the run here
      if step == start_step + 1:   # the first step compiles: keep it out of the rate
        jax.block_until_ready(step_metrics)
        progress.steps_per_second(step)

      if _due(step, config.log_every_steps, total_steps):
        flush()
        rate = progress.steps_per_second(step)
        summary = {f'train/{k}': sum(float(m[k]) for _, m in unlogged) / len(unlogged)
                   for k in ('loss', 'accuracy')}
        summary['train/learning_rate'] = float(unlogged[-1][1]['learning_rate'])
        unlogged.clear()
        summary['steps_per_second'] = rate
        writer.write(step, summary)
        progress.report(step, summary['train/loss'], rate)

      if _due(step, config.eval_every_steps, total_steps):
        flush()
        eval_metrics = evaluate_and_record(step)
        progress.steps_per_second(step)  # do not count evaluation time as training

      stop = watch.reached(step)
      if _due(step, config.checkpoint_every_steps, total_steps) or stop:
        flush()
        save(step)
      if stop:
        checkpointer.wait()
        raise Preempted(step, watch.signum)
  except evaluate_lib.Interrupted:
    flush()
    save(step)
    checkpointer.wait()
    raise Preempted(step, watch.signum) from None
  finally:
    watch.close()
    checkpointer.close()
    writer.close()
  if is_chief:
    logging.info('Done: step %d of %d; %s; checkpoint %s.', step, total_steps,
                 ', '.join(f'{k} {v:.6g}' for k, v in eval_metrics.items()),
                 os.path.join(checkpointer.directory, str(last_saved)))
  return Result(backend.to_host(state), eval_metrics, step)


def _check_same_step(restored_step):
  """Every process must resume from the same step: a workdir on a disk that is not shared
  (a local path on a pod) shows each host other checkpoints."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    steps_found = multihost_utils.process_allgather(
        np.int64(-1 if restored_step is None else restored_step))
    if len(set(np.asarray(steps_found).ravel().tolist())) > 1:
      raise ValueError(
          f'The processes found different latest checkpoints in the workdir (steps '
          f'{np.asarray(steps_found).ravel().tolist()}, -1: none): give every process the same '
          f'shared --workdir (e.g. gs://bucket/runs/name), not a path on each host\'s own disk.')


UNLOGGED_FILE = 'train_metrics_since_log.json'   # beside the checkpoints, rewritten at each save


def _write_unlogged(workdir, step, unlogged):
  """Keeps the per-step train metrics not yet in a train/* record with checkpoint `step`."""
  rows = [[int(s), {k: float(m[k]) for k in ('loss', 'accuracy', 'learning_rate')}]
          for s, m in unlogged]
  workdir_lib.write_file(workdir, UNLOGGED_FILE, json.dumps({'step': int(step), 'steps': rows}))


def _read_unlogged(workdir, step):
  """The per-step train metrics `_write_unlogged` kept with checkpoint `step` ([] when the
  file is missing, unreadable or of another checkpoint)."""
  try:
    kept = json.loads(epath.Path(workdir_lib.join(workdir, UNLOGGED_FILE)).read_text())
    return [(int(s), m) for s, m in kept['steps']] if kept['step'] == step else []
  except (OSError, ValueError, KeyError, TypeError):
    return []


def _evaluated(workdir, step, is_chief) -> bool:
  """Whether metrics.jsonl holds the evaluation at `step` (process 0 reads it and tells
  the others, so that every process runs the evaluation or none)."""
  done = is_chief and any(r.get('step') == step and 'eval/loss' in r
                          for r in metrics.read_jsonl(workdir))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    done = bool(multihost_utils.broadcast_one_to_all(np.int32(done)))
  return done


def _non_finite_message(step, step_metrics, host_state, last_saved, directory) -> str:
  where = []
  if not math.isfinite(float(step_metrics['loss'])):
    where.append(f'the training loss ({float(step_metrics["loss"])})')
  bad = state_lib.non_finite_leaves(host_state)
  if bad:
    where.append('the state (' + ', '.join(bad) + ')')
  good = (f'the last good checkpoint is step {last_saved} in {directory}'
          if last_saved is not None else 'no checkpoint was saved yet')
  return (f'Non-finite values in {" and ".join(where) or "the state"} at step {step}; '
          f'stopping, {good}. '
          f'Try a lower learning_rate.')
