"""Evaluating a checkpoint of a run directory without training (`experiments.evaluate`).

    from irevnet_jax.train import evaluate_run
    result = evaluate_run.evaluate_run('runs/released')         # its eval split
    print(evaluate_run.table(result))
    evaluate_run.record(result)                # appends one line to <workdir>/metrics.jsonl

The numbers are the training loop's evaluation (`irevnet_jax.train.evaluate`):
loss, top-1 and top-5 accuracy over the whole eval split, one forward pass per
image at the run's train_dtype / train_precision (or the ones given), and the
relative inversion error ||invert(forward(x)) - x|| / ||x|| on the model's input
over a fixed subset of the split, with the exact model (float32, 'highest').

`dataset` overrides fields of the run's `config.dataset` (the same names as
`--config.dataset.<field>` of `experiments.main`): e.g. {'name': 'synthetic',
'num_eval_examples': 16}, or {'data_dir': ...} for the run's own data elsewhere.
Fields not given keep the run's values, so a run keeps its preprocessing.

Records: {"step": <checkpoint step>, "evaluate/<dataset name>/<metric>": value, ...}
with metric in loss, accuracy, accuracy_top5, num_examples and (invertible
models) inversion_rel_error, inversion_examples. The `evaluate/` prefix keeps
them apart from the training loop's `eval/` records at the same step; their
step is at most the run's latest checkpoint, so a resumed run keeps them.
"""
from typing import Dict, NamedTuple, Optional

from absl import logging
import ml_collections

from irevnet_jax.model import precision as precision_lib
from irevnet_jax.run import checkpoints, metrics, run_config, workdir_lock
from irevnet_jax.train import config as config_lib
from irevnet_jax.train import evaluate as evaluate_lib
from irevnet_jax.train import parallel, program

PREFIX = 'evaluate'


class Result(NamedTuple):
  workdir: str
  step: int                        # of the checkpoint evaluated
  dataset: str                     # dataset.name evaluated on
  metrics: Dict[str, float]        # eval/loss, eval/accuracy, ... (irevnet_jax.train.evaluate)
  config: ml_collections.ConfigDict   # the run's config with the overrides
  num_devices: int


def with_overrides(config, dataset: Optional[dict] = None, dtype: Optional[str] = None,
                   precision: Optional[str] = None) -> ml_collections.ConfigDict:
  """A copy of the run's `config` with dataset fields (None values skipped), train_dtype
  and train_precision replaced, checked like a training config. Synthetic images get the
  model's num_classes unless dataset.num_classes says otherwise. An older run's config
  gets the fields added since (`config.ADDED_FIELDS`)."""
  config = config_lib.with_added_fields(config)
  for field, value in (dataset or {}).items():
    if value is not None:
      config.dataset[field] = value
  if (config.dataset.get('name') == 'synthetic'
      and not config.dataset.get('num_classes', None)):   # the model's classes, not 10
    with config.dataset.ignore_type():
      config.dataset.num_classes = int(config.model.num_classes)
  if dtype is not None:
    config.train_dtype = dtype
  if precision is not None:
    config.train_precision = precision
  config_lib.check_config(config)
  return config


def evaluate_run(workdir: str, step: Optional[int] = None, dataset: Optional[dict] = None,
                 batch_size: Optional[int] = None, inversion_examples: Optional[int] = None,
                 dtype: Optional[str] = None, precision: Optional[str] = None) -> Result:
  """Evaluates a checkpoint of the run in `workdir`. Single process; writes nothing.

  Args:
    workdir: a run directory (local path or URL).
    step: the checkpoint to evaluate (default: the latest).
    dataset: `dataset` fields that replace the run's (e.g. {'name': 'synthetic'}).
    batch_size: the global eval batch (default the run's eval_batch_size), a positive
      multiple of the devices; capped at the examples there are (`capped_batch`).
    inversion_examples: how many eval examples are inverted (-1: all, 0: none; default
      the run's eval_inversion_examples).
    dtype / precision: the run's train_dtype / train_precision unless given (the
      inversion always uses the exact model, `model.precision`).
  Returns:
    A `Result`: the checkpoint's step, the dataset, `evaluate.evaluate`'s metrics, the
    config with the overrides, the number of devices.
  Raises UserError (naming the fix) for a config, dataset or batch that cannot work.
  """
  config, variables, step = checkpoints.load_run(workdir, step)
  config = with_overrides(config, dataset, dtype, precision)
  devices = parallel.select_devices(int(config.num_devices))
  batch_size = int(config.eval_batch_size if batch_size is None else batch_size)
  parallel.check_batch_size('batch_size', batch_size, len(devices), 'devices')
  prog = program.build_program(config, parallel.make_backend(config.parallel, devices))
  source = prog.source
  batch_size = capped_batch(batch_size, source.num_eval_examples, len(devices))
  if inversion_examples is None:
    inversion_examples = int(config.eval_inversion_examples)
  state = prog.backend.put_state(variables)        # the steps read params and batch_stats only
  result = evaluate_lib.evaluate(prog, state, source, batch_size, int(inversion_examples),
                                 int(config.seed), progress=_log_progress)
  return Result(workdir, step, source.name, result, config, len(devices))


def capped_batch(batch_size: int, num_examples: int, num_devices: int) -> int:
  """`batch_size`, or the smallest multiple of `num_devices` that holds `num_examples` when
  that is fewer: 32 images are not padded up to a batch of 256 (twice, with the inversion)."""
  needed = max(1, -(-num_examples // num_devices)) * num_devices
  return min(batch_size, needed)


def _log_progress(what: str, done: int, total: int):
  logging.info('%s: batch %d of %d', what, done, total)


def metric_name(dataset: str, key: str) -> str:
  """'eval/accuracy' -> 'evaluate/<dataset>/accuracy'."""
  return f'{PREFIX}/{dataset}/{key.split("/", 1)[-1]}'


def record(result: Result) -> bool:
  """Appends the result to `<workdir>/metrics.jsonl` (and TensorBoard) at its checkpoint's
  step, keeping every line there; False (and nothing written) when the same record, from the
  same step, dataset and settings, is there already. Call it while holding the workdir's
  lock."""
  line = {'step': int(result.step), **{metric_name(result.dataset, k): float(v)
                                       for k, v in result.metrics.items()}}
  if line in metrics.read_jsonl(result.workdir):
    return False
  writer = metrics.MetricWriter(result.workdir, append=True)
  try:
    writer.write(result.step, {metric_name(result.dataset, k): v
                               for k, v in result.metrics.items()})
  finally:
    writer.close()
  return True


def lock_for_writing(workdir: str):
  """The run's `WorkdirLock`, or None (with the reason) when a live run holds it or the
  workdir is not writable: then the result is printed but not recorded."""
  run_config.read_config(workdir)      # a clear error for a directory that is not a run
  try:
    return workdir_lock.WorkdirLock(workdir), None
  except OSError as error:
    return None, str(error).split(";")[0]


def table(result: Result) -> str:
  """The result as a few aligned lines of text."""
  m, c = result.metrics, result.config
  count = int(m['eval/num_examples'])
  lines = [f'{result.workdir}: checkpoint step {result.step}, {result.dataset} eval split '
           f'({count} examples), {precision_lib.resolved_train_dtype(c.train_dtype)} with precision '
           f'{c.train_precision!r} on {result.num_devices} device(s)',
           f'  {"loss":<26} {m["eval/loss"]:.4f}',
           f'  {"top-1 accuracy":<26} {100 * m["eval/accuracy"]:.3f}%  '
           f'({round(m["eval/accuracy"] * count)} of {count})',
           f'  {"top-5 accuracy":<26} {100 * m["eval/accuracy_top5"]:.3f}%']
  if 'eval/inversion_rel_error' in m:
    lines.append(f'  {"inversion error (rel. L2)":<26} {m["eval/inversion_rel_error"]:.2e}  '
                 f'({int(m["eval/inversion_examples"])} examples, float32 \'highest\')')
  return '\n'.join(lines)
