"""The walk of an experiment config through the training path: which files of irevnet_jax
it enters, in order, and how often it returns to a file it had left (issue 30 item 5).

    python -m benchmarks.config_walk                  # digits, 2 steps
    python -m benchmarks.config_walk --data=cifar10   # a tiny CIFAR-10 model, mock TFDS data

A runtime approximation of a static trace: a profile hook runs a short `train_and_evaluate`
and follows the config and what is made from it (return values of calls that received
it, containers and objects holding them, closures that captured them). A call is followed
from a followed frame when it passes such a value, it is a call (not a property), and its
function is a plain function or a method whose name the project defines once (a method
named in several classes is a hall the trace does not enter); code under JAX's tracing,
comprehensions and the model layer (model/) are not followed. Each call site counts once.
Consecutive calls into one file are one stay; a stay in a file visited before is a return.
"""
import argparse
import ast
import contextlib
import dis
import os
import sys
import tempfile
import types

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'irevnet_jax') + os.sep
NOT_FOLLOWED = ('model' + os.sep,)
SMALL_INTS = range(-5, 257)   # shared by all of Python: never evidence of the config


def method_name_counts():
  """{method name: how many classes of irevnet_jax/ and benchmarks/ define it}."""
  counts = {}
  for top in ('irevnet_jax', 'benchmarks'):
    for folder, _, files in os.walk(os.path.join(REPO, top)):
      for name in files:
        if name.endswith('.py'):
          with open(os.path.join(folder, name)) as f:
            tree = ast.parse(f.read())
          for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
              for item in node.body:
                if isinstance(item, ast.FunctionDef):
                  counts[item.name] = counts.get(item.name, 0) + 1
  return counts


class Walk:
  """The profile hook: `events` are (file under irevnet_jax/, function) in call order."""

  def __init__(self, config):
    self.methods = method_name_counts()
    self.values = {}        # id -> object, kept alive so that ids stay unique
    self.followed = set()   # ids of frames the walk is in
    self.returning = set()  # ids of frames whose return value joins the config's parts
    self.sites = set()
    self.events = []
    self.mark(config)

  def mark(self, value, depth=0):
    if isinstance(value, str):
      if len(value) >= 3:
        self.values[id(value)] = value
      return
    if value is None or isinstance(value, bool) or (isinstance(value, int)
                                                    and value in SMALL_INTS):
      return
    if isinstance(value, (bytes, type, types.FunctionType, types.ModuleType)):
      return
    if id(value) in self.values:
      return
    self.values[id(value)] = value
    items = ()
    if isinstance(value, (tuple, list)):
      items = value
    elif isinstance(value, (dict, ml_collections.ConfigDict)):
      items = list(value.values())   # dicts and ConfigDicts: the whole config tree
      depth -= 1
    if depth < 2:
      for item in items:
        self.mark(item, depth + 1)

  def holds(self, value):
    if id(value) in self.values:
      return True
    if isinstance(value, (tuple, list)) and len(value) < 50:
      return any(id(v) in self.values for v in value)
    if isinstance(value, dict) and len(value) < 50:
      return any(id(v) in self.values for v in dict.values(value))
    return False

  def _passes_config(self, frame):
    code, local = frame.f_code, frame.f_locals
    count = code.co_argcount + code.co_kwonlyargcount
    count += bool(code.co_flags & 4) + bool(code.co_flags & 8)
    for name in code.co_varnames[:count]:
      if name in local and self.holds(local[name]):
        return True
      if name == 'self' and name in local:   # an object holding the config's parts
        try:
          attributes = object.__getattribute__(local[name], '__dict__')
        except Exception:  # noqa: BLE001  (slots, proxies)
          attributes = {}
        if any(id(v) in self.values for v in list(attributes.values())[:100]):
          return True
    return ('.<locals>.' in code.co_qualname   # a closure that captured them
            and any(self.holds(local[v]) for v in code.co_freevars if v in local))

  def _is_plain_call(self, caller, code):
    opname = ''
    for instruction in dis.get_instructions(caller.f_code, show_caches=True):
      if instruction.offset > caller.f_lasti:
        break
      if instruction.opname != 'CACHE':
        opname = instruction.opname
    if not opname.startswith(('CALL', 'PRECALL')):
      return False   # a property, an operator, a with statement
    parts = code.co_qualname.split('.')
    if len(parts) > 1 and parts[-2] != '<locals>':   # a method
      return code.co_name == '__init__' or self.methods.get(code.co_name, 0) <= 1
    return True

  @staticmethod
  def _under_jax(frame):
    while frame is not None:
      if os.sep + os.path.join('jax', '_src') + os.sep in frame.f_code.co_filename:
        return True
      frame = frame.f_back
    return False

  def __call__(self, frame, event, arg):
    try:   # a hook inside every call of the program: it must never break one
      self._see(frame, event, arg)
    except Exception:  # noqa: BLE001  (objects half built, proxies that refuse isinstance)
      pass

  def _see(self, frame, event, arg):
    if event == 'return':
      self.followed.discard(id(frame))
      if id(frame) in self.returning:
        self.returning.discard(id(frame))
        self.mark(arg)
      return
    if event != 'call':
      return
    code, caller = frame.f_code, frame.f_back
    if code.co_name == 'train_and_evaluate' and code.co_filename.startswith(PACKAGE):
      self.followed.add(id(frame))
      self.events.append((os.path.relpath(code.co_filename, PACKAGE), code.co_qualname))
      return
    if code.co_name.startswith('<') or not self._passes_config(frame):
      return
    self.returning.add(id(frame))
    path = code.co_filename
    if (caller is None or id(caller) not in self.followed or not path.startswith(PACKAGE)
        or path[len(PACKAGE):].startswith(NOT_FOLLOWED)
        or not self._is_plain_call(caller, code) or self._under_jax(caller)):
      return
    self.followed.add(id(frame))
    site = (caller.f_code.co_filename, caller.f_lineno, code)
    if site not in self.sites:
      self.sites.add(site)
      self.events.append((path[len(PACKAGE):], code.co_qualname))


def stays(events):
  """[(file, [functions])]: consecutive events in one file merged."""
  merged = []
  for path, function in events:
    if merged and merged[-1][0] == path:
      if function not in merged[-1][1]:
        merged[-1][1].append(function)
    else:
      merged.append((path, [function]))
  return merged


def experiment_config(data: str):
  from experiments.configs import cifar10, digits  # pylint: disable=g-import-not-at-top
  if data == 'digits':
    config = digits.get_config()
  else:   # CIFAR-10's config on a model of two one-block stages
    config = cifar10.get_config()
    config.model.blocks, config.model.strides, config.model.widths = (1, 1), (1, 2), (16, 64)
    config.batch_size = config.eval_batch_size = 8
    config.dataset.data_dir = tempfile.mkdtemp()   # mock data: nothing is read there
  config.num_train_steps, config.log_every_steps = 2, 1
  config.eval_every_steps = config.checkpoint_every_steps = 2
  return config


@contextlib.contextmanager
def mock_tfds(num_examples: int = 16):
  """TFDS's mock data, its batched read given the signature it is called with (TFDS 4.9)."""
  from unittest import mock  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  def read(keys, generator, serialized=False):
    del serialized
    return [generator[int(key)] for key in keys]
  with mock.patch('tensorflow_datasets.testing.mocking._getitems', read), \
      tfds.testing.mock_data(num_examples=num_examples):
    yield


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--data', choices=('digits', 'cifar10'), default='digits')
  args = parser.parse_args()
  from irevnet_jax.train import loop  # pylint: disable=g-import-not-at-top
  config = experiment_config(args.data)
  walk = Walk(config)
  data = mock_tfds() if args.data == 'cifar10' else contextlib.nullcontext()
  with tempfile.TemporaryDirectory() as folder, data:
    sys.setprofile(walk)
    try:
      loop.train_and_evaluate(config, os.path.join(folder, 'run'))
    finally:
      sys.setprofile(None)
  seen, returns = set(), 0
  print('| stay | return | file | functions |\n|---|---|---|---|')
  for number, (path, functions) in enumerate(stays(walk.events), 1):
    again = path in seen
    returns += again
    seen.add(path)
    shown = ', '.join(functions[:5]) + (' ...' if len(functions) > 5 else '')
    print(f'| {number} | {"yes" if again else ""} | {path} | {shown} |')
  print(f'\n{len(stays(walk.events))} stays in {len(seen)} files; {returns} returns to a file '
        f'left ({args.data}).')


if __name__ == '__main__':
  main()
