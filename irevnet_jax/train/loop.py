"""The training loop: input, model, restore, then steps with logs, evaluations and checkpoints.

    result = train_and_evaluate(config, workdir)   # config: experiments/configs/*.py

Reads top to bottom. A run owns its workdir while it trains (a second run on it
is refused) and resumes from the latest good checkpoint there, refusing changed
training fields unless allowed; SIGTERM (or Ctrl-C) saves and raises
`Preempted`; a non-finite loss or state stops the run without saving that
state; a failed save stops it at once (`checkpoints.CheckpointSaveError`).
Signals: `preemption`; what a resume reads back and records: `resume`.
"""
import math
import os
from typing import Any, Dict, NamedTuple

from absl import logging
import jax
import ml_collections

from irevnet_jax.errors import UserError
from irevnet_jax.run import checkpoints, metrics, paths, run_config, workdir as workdir_lib
from irevnet_jax.run import workdir_lock
from irevnet_jax.train import config as config_lib
from irevnet_jax.train import evaluate as evaluate_lib
from irevnet_jax.train import memory_fit, parallel, peers, program, resume, state as state_lib
from irevnet_jax.train.preemption import Preempted, StopWatch


class Result(NamedTuple):
  state: Dict[str, Any]        # final host (numpy) train state
  eval_metrics: Dict[str, float]
  step: int


def _due(step, every, total):
  return step == total or (every > 0 and step % every == 0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False) -> Result:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if any.

  Raises `Preempted` after saving on SIGTERM / Ctrl-C, UserError (naming
  the step) on a non-finite loss or state without saving that state, and
  when resuming with changed training fields (unless
  `allow_config_change`: then config_history.jsonl keeps the old config).
  """
  config_lib.check_config(config)
  with peers.Watch():   # several processes: one that stops or fails stops the others
    return _train_in_workdir(config, workdir, allow_config_change)


def _open_workdir(workdir):
  before = workdir_lib.state(workdir)
  workdir = workdir_lib.check_workdir(workdir)
  return before, workdir, workdir_lock.WorkdirLock(workdir)


def _train_in_workdir(config, workdir, allow_config_change) -> Result:
  process_index, process_count = jax.process_index(), jax.process_count()
  is_chief = process_index == 0
  # Only the primary process writes the shared files (lock, config, metrics, checkpoint
  # metadata); the others read the same workdir. A refusal ends every process alike.
  opened = peers.chief_decides(lambda: _open_workdir(workdir))
  if not is_chief:
    return _train(config, paths.resolve(workdir), allow_config_change, process_index,
                  process_count, lock=None)
  before, workdir, lock = opened
  finished = False
  try:
    result = _train(config, workdir, allow_config_change, process_index, process_count, lock)
    finished = True
    return result
  finally:
    lock.release()
    if not finished and not lock.lost:   # a lost workdir is another run's: touch nothing
      workdir_lib.clean_up_refused(workdir, before)   # a refused run leaves nothing behind


def _train(config, workdir, allow_config_change, process_index, process_count, lock) -> Result:
  """`train_and_evaluate` once the workdir is checked and locked (`lock`: the chief's
  `WorkdirLock`, None on the other processes)."""
  is_chief = process_index == 0

  def still_owner():
    """Raises LeaseLost once another run may own the workdir: called before every write."""
    if lock is not None:
      lock.check()

  # Devices, batch sizes and the back end.
  devices = parallel.select_devices(int(config.num_devices))
  num_global = len(devices) * process_count
  what = f'devices ({process_count} process(es) x {len(devices)} local devices)'
  parallel.check_batch_size('batch_size', config.batch_size, num_global, what,
                            parallel.MIN_BN_EXAMPLES)
  parallel.check_batch_size('eval_batch_size', config.eval_batch_size, num_global, what)
  backend = parallel.make_backend(config.parallel, devices)
  local_batch = config.batch_size // process_count
  local_eval_batch = config.eval_batch_size // process_count
  per_device = config.batch_size // num_global
  if per_device < parallel.MIN_BN_EXAMPLES and is_chief:
    logging.warning('Each device sees %d example(s) per step: BatchNorm statistics over so few '
                    'are noise, and training (and inversion) may fail. Use batch_size >= %d '
                    'or fewer devices (num_devices).', per_device,
                    parallel.MIN_BN_EXAMPLES * num_global)

  # Model, data, optimizer and steps; the train step, compiled now from shapes, ends the run
  # in one line if it does not fit in memory (before any data is read or file written).
  prog = program.build_program(config, backend)
  prog, config = memory_fit.fitting_program(prog, config, local_batch)
  source, total_steps = prog.source, prog.total_steps

  # State: the latest usable checkpoint, or a fresh start.
  checkpointer = checkpoints.Checkpointer(workdir, keep=int(config.keep_checkpoints),
                                          use_async=bool(config.async_checkpoints))
  restored, restored_step = checkpointer.restore(target=state_lib.host_zeros(prog.state_shapes))
  resume.check_same_step(restored_step)
  still_owner()   # a restore can outlast the lease
  if is_chief:   # a refused resume stops here, before it says anything about resuming
    config_record = run_config.check_config_record(workdir, config, restored_step,
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
                 prog.num_params, total_steps, config.batch_size, num_global, backend.name,
                 prog.train_net.arch.dtype, prog.steps_per_epoch)
  writer = metrics.MetricWriter(workdir, enabled=is_chief, resume_step=start_step)
  progress = metrics.Progress(start_step, total_steps, enabled=is_chief)

  state = backend.put_state(host_state)
  del host_state
  watch = StopWatch()
  watch.reached(start_step)   # tells the multi-host preemption service where this run starts
  batches = backend.prefetch(source.train_batches(local_batch, process_index, process_count,
                                                  int(config.seed), start_step))
  pending = []          # (step, per-step metrics on the devices), fetched at log time
  # fetched since the last train/* record, a resumed run's steps before the resume included
  unlogged = resume.TrainMetricsSinceLog(checkpointer.bookkeeping)
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
        raise UserError(_non_finite_message(s, m, backend.to_host(state), last_saved,
                                            checkpointer.directory))
    unlogged.extend(fetched)
    return fetched

  def save(step):
    """Starts saving the state of `step` in the background: the training thread waits only
    for the device-to-host copy (none on CPU) and Orbax's start of the write."""
    nonlocal last_saved
    if last_saved != step:
      still_owner()
      checkpointer.save(step, backend.to_host(state), bookkeeping=unlogged.bookkeeping())
      last_saved = step
      if is_chief:
        config_record.commit()   # the config (and its history) goes with the first save

  def run_evaluation():
    return evaluate_lib.evaluate(prog, state, source, local_eval_batch,
                                 int(config.eval_inversion_examples), int(config.seed),
                                 should_stop=watch.stop_now)

  def evaluate_and_record(step):
    metrics_now = run_evaluation()
    still_owner()
    writer.write(step, metrics_now)
    if is_chief:
      logging.info('eval at step %d: %s', step,
                   ', '.join(f'{k} {v:.6g}' for k, v in metrics_now.items()))
    return metrics_now

  step = start_step
  try:
    if (restored is not None and 0 < step <= total_steps
        and _due(step, config.eval_every_steps, total_steps)
        and not resume.evaluated(workdir, step, is_chief)):
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
      still_owner()          # a lost lease too, before this step writes anything
      if step == start_step + 1:   # the first step compiles: keep it out of the rate
        jax.block_until_ready(step_metrics)
        progress.steps_per_second(step)

      if _due(step, config.log_every_steps, total_steps):
        flush()
        rate = progress.steps_per_second(step)
        summary = unlogged.summary()
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
    if lock is not None and lock.lost:   # another run may own the workdir: no save, no flush
      writer.abandon()
    else:
      checkpointer.close()
      writer.close()
  still_owner()
  if is_chief:
    logging.info('Done: step %d of %d; %s; checkpoint %s.', step, total_steps,
                 ', '.join(f'{k} {v:.6g}' for k, v in eval_metrics.items()),
                 os.path.join(checkpointer.directory, str(last_saved)))
  return Result(backend.to_host(state), eval_metrics, step)


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
