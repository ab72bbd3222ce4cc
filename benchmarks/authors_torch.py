"""The authors' PyTorch i-RevNet train step, timed: their models/iRevNet.py from a checkout.

    python -m benchmarks.authors_torch --authors_repo=.authors      # on a GPU (gpu.sh runs it)
    python -m benchmarks.authors_torch --authors_repo=/tmp/authors --smoke   # CPU: the logic

Their repository (github.com/jhjacobsen/pytorch-i-revnet, MIT) is imported from
--authors_repo, never copied here. Models as released: `bijective_released`: their
ILSVRC_main.py with scripts/train_ilsvrc-2012.sh's arguments (blocks 6,16,72,6, strides
2,2,2,2, widths 24,96,384,1536, init_ds 2, 224 x 224, 1,000 classes, no dropout); `cifar10`:
CIFAR_main.py with scripts/train_cifar-10.sh's (18,18,18; 1,2,2; 16,64,256; dropout 0.1).
One step = forward, cross-entropy, backward, SGD momentum 0.9 with their weight decay, under
bfloat16 autocast with channels_last model and inputs; synthetic data made on the device;
warm-up steps (and torch.compile's compile, in compile s) are not timed; the device is
synchronised around the timed steps. Modes: eager at each batch, going up until one runs out
of memory (an 'out of memory' row; larger ones are not tried); compile
(`torch.compile(model, dynamic=False)`) at the model's fastest eager batch, CIFAR-10 first
(their 100-block graph compiles for minutes: skipped when the budget has no room).
--smoke: CPU, shrunken models of the same kind (their constructor's arguments), batch 2-4.
Rows (speed.py's columns, what='authors') print as they finish; --json_out gets them all
after each row (gpu.sh hands them to the GPU table, which prints the ratios).
"""
import argparse
import contextlib
import gc
import io
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

from benchmarks import tables

# Their constructor's arguments (models/iRevNet.py), the optimizer's weight decay, batches.
MODELS = {
    'bijective_released': dict(
        nBlocks=[6, 16, 72, 6], nStrides=[2, 2, 2, 2], nChannels=[24, 96, 384, 1536],
        nClasses=1000, init_ds=2, dropout_rate=0.0, in_shape=[3, 224, 224]),
    'cifar10': dict(
        nBlocks=[18, 18, 18], nStrides=[1, 2, 2], nChannels=[16, 64, 256], nClasses=10,
        init_ds=0, dropout_rate=0.1, in_shape=[3, 32, 32]),
}
WEIGHT_DECAY = {'bijective_released': 1e-4, 'cifar10': 5e-4}   # ILSVRC_main / utils_cifar
BATCHES = {'bijective_released': (256, 512, 768), 'cifar10': (512, 1024, 2048)}
SMOKE = {   # same kinds of stage at CPU sizes
    'bijective_released': dict(nBlocks=[1, 1, 1], nStrides=[2, 2, 2], nChannels=[24, 96, 384],
                               nClasses=10, in_shape=[3, 32, 32]),
    'cifar10': dict(nBlocks=[1, 1, 1], in_shape=[3, 16, 16]),
}
SMOKE_BATCHES = (2, 4)
SETTING = 'bf16 autocast, channels_last'
GIB = 2.0 ** 30


def import_authors_class(repo: str):
  """Their `iRevNet` class from <repo>/models/iRevNet.py (imported as `models.iRevNet`)."""
  path = os.path.join(os.path.abspath(repo), 'models', 'iRevNet.py')
  if not os.path.isfile(path):
    raise SystemExit(f'no models/iRevNet.py under --authors_repo={repo}: give a checkout of '
                     'github.com/jhjacobsen/pytorch-i-revnet')
  sys.path.insert(0, os.path.dirname(os.path.dirname(path)))
  from models import iRevNet as module  # pylint: disable=g-import-not-at-top,import-error
  if os.path.abspath(module.__file__) != path:
    raise SystemExit(f"'models.iRevNet' came from {module.__file__}, not {path}: run without "
                     "another 'models' package on sys.path")
  return module.iRevNet


def build(irevnet_class, model: str, smoke: bool, device):
  """Their model with the released arguments (SMOKE's on top with smoke), channels_last."""
  kwargs = dict(MODELS[model], **(SMOKE[model] if smoke else {}), affineBN=True, mult=4)
  with device, contextlib.redirect_stdout(io.StringIO()):   # made there; their banners hidden
    net = irevnet_class(**kwargs)
  return net.to(device, memory_format=torch.channels_last).train(), kwargs


class Step:
  """One train step of their model on a fixed synthetic batch kept on the device."""

  def __init__(self, net, kwargs, batch, model, mode, device):
    self.net, self.device = net, device
    self.forward = torch.compile(net, dynamic=False) if mode == 'compile' else net
    self.optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9,
                                     weight_decay=WEIGHT_DECAY[model])
    self.x = torch.rand(batch, *kwargs['in_shape'], device=device).contiguous(
        memory_format=torch.channels_last)
    self.y = torch.randint(0, kwargs['nClasses'], (batch,), device=device)

  def __call__(self):
    with torch.autocast(self.device.type, dtype=torch.bfloat16):
      logits, _ = self.forward(self.x)
      loss = F.cross_entropy(logits, self.y)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    return loss

  def sync(self):
    if self.device.type == 'cuda':
      torch.cuda.synchronize(self.device)


def time_step(step: Step, min_seconds: float, warmup: int = 2):
  """(first step's seconds: compile + run, seconds per step over >= min_seconds, loss)."""
  step.sync()
  start = time.perf_counter()
  step()
  step.sync()
  first = time.perf_counter() - start
  for _ in range(warmup):
    step()
  step.sync()
  start = time.perf_counter()
  step()
  step.sync()
  one = time.perf_counter() - start
  steps = max(3, math.ceil(min_seconds / max(one, 1e-6)))
  start = time.perf_counter()
  for _ in range(steps):
    loss = step()
  step.sync()
  return first, (time.perf_counter() - start) / steps, float(loss.detach())


def is_out_of_memory(error: Exception) -> bool:
  return isinstance(error, torch.cuda.OutOfMemoryError) or 'out of memory' in str(error)


def train_row(irevnet_class, model, mode, batch, smoke, device, min_seconds):
  """One row (speed.py's columns, what='authors'); out of memory is a row, not an error."""
  row = {'what': 'authors', 'model': model + (' (smoke)' if smoke else ''), 'mode': mode,
         'setting': SETTING, 'batch': batch}
  net, kwargs = build(irevnet_class, model, smoke, device)
  row['blocks'] = sum(kwargs['nBlocks'])
  if device.type == 'cuda':
    torch.cuda.reset_peak_memory_stats(device)
  step = None
  try:
    step = Step(net, kwargs, batch, model, mode, device)
    first, seconds, loss = time_step(step, min_seconds)
  except Exception as e:  # noqa: BLE001  out of memory ends this batch, nothing else
    if not is_out_of_memory(e):
      raise
    return dict(row, note='out of memory')
  finally:
    del step, net
    gc.collect()   # then the cached blocks of this batch go back before the next one
    if device.type == 'cuda':
      torch.cuda.empty_cache()
  row.update(step_ms=1e3 * seconds, img_s=batch / seconds, note=f'loss {loss:.3f}')
  if mode == 'compile':
    row['compile_s'] = first - seconds
  if device.type == 'cuda':
    row['peak_gib'] = torch.cuda.max_memory_allocated(device) / GIB
  return row


def plan(models, modes, smoke, batches):
  """('authors', model, mode, batch): eager rows at every batch, then a compile row per
  model (CIFAR-10 first) at batch 'best', its fastest eager batch."""
  eager = [('authors', model, 'eager', batch) for model in models
           for batch in (batches or (SMOKE_BATCHES if smoke else BATCHES[model]))]
  compiled = [('authors', model, 'compile', 'best')
              for model in sorted(models, key=lambda m: m != 'cifar10')]
  return eager * ('eager' in modes) + compiled * ('compile' in modes)


def best_batch(rows, model, default):
  """The batch of `model`'s fastest eager row, else `default`."""
  timed = [r for r in rows if r['model'].startswith(model) and r['mode'] == 'eager'
           and r.get('img_s')]
  return max(timed, key=lambda r: r['img_s'])['batch'] if timed else default


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--authors_repo', required=True, help='a checkout of their repository')
  parser.add_argument('--models', default='bijective_released,cifar10')
  parser.add_argument('--modes', default='eager,compile', help='eager, compile')
  parser.add_argument('--batches', default='', help='batch sizes (default: per model)')
  parser.add_argument('--min_seconds', type=float, default=3.0, help='timing per row')
  parser.add_argument('--budget_s', type=float, default=170.0, help='no row after it')
  parser.add_argument('--smoke', action='store_true', help='CPU, shrunken models, batch 2-4')
  parser.add_argument('--json_out', default='', help='the rows as JSON, after each row')
  args = parser.parse_args(argv)
  device = torch.device('cpu' if args.smoke or not torch.cuda.is_available() else 'cuda')
  if device.type == 'cpu' and not args.smoke:
    raise SystemExit('no CUDA device for PyTorch: run on a GPU, or pass --smoke')
  irevnet_class = import_authors_class(args.authors_repo)
  card = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
  print(f"the authors' i-RevNet on {card}, torch {torch.__version__}, {SETTING}, budget "
        f'{args.budget_s:.0f} s' + (' (SMOKE: shrunken models, numbers mean nothing)'
                                    if args.smoke else ''), flush=True)
  torch.backends.cudnn.benchmark = True   # their training scripts' setting
  batches = tuple(int(b) for b in args.batches.split(',') if b)
  out_of_memory, rows = set(), []

  def make_rows(item):
    _, model, mode, batch = item
    if batch == 'best':
      batch = best_batch(rows, model, (SMOKE_BATCHES if args.smoke else BATCHES[model])[0])
      torch._dynamo.reset()   # pylint: disable=protected-access  (a fresh compile per row)
    if any(batch > b for m, o, b in out_of_memory if (m, o) == (model, mode)):
      return []   # a smaller batch of this model and mode ran out of memory
    row = train_row(irevnet_class, model, mode, batch, args.smoke, device, args.min_seconds)
    if row.get('note') == 'out of memory':
      out_of_memory.add((model, mode, batch))
    rows.append(row)
    write_json(rows)   # after each row: a hard stop keeps the rows so far
    return [row]

  def write_json(rows):
    if args.json_out:
      with open(args.json_out, 'w') as f:
        json.dump({'card': card, 'torch': torch.__version__, 'rows': rows}, f)

  def guess_s(item, costs):   # a compile row: their 100-block graph compiles for minutes
    if item[2] == 'compile':   # on a loaded CPU the smoke's took 145 s
      return 60.0 if item[1] == 'cifar10' else 150.0
    return costs.get(item[1], 5.0 if args.smoke else 20.0) * (1.0 if args.smoke else 1.5)

  all_rows = tables.run_items(plan(args.models.split(','), args.modes.split(','), args.smoke,
                                   batches), make_rows, args.budget_s, guess_s)
  columns = [('what', 'what', ''), ('model', 'model', ''), ('blocks', 'blocks', 'd'),
             ('mode', 'mode', ''), ('setting', 'dtype/prec.', ''), ('batch', 'batch', 'd'),
             ('compile_s', 'compile s', '.1f'), ('step_ms', 'ms/step', '.1f'),
             ('img_s', 'images/s', '.1f'), ('peak_gib', 'peak GiB', '.2f'), ('note', 'note', '')]
  write_json(all_rows)   # the skipped and failed ones too
  print('\n' + tables.format_table(all_rows, columns, markdown=True))


if __name__ == '__main__':
  main()
