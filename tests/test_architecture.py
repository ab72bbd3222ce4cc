"""The package's import graph: layers import only downwards, and nothing imports in a circle.

Every `import` / `from ... import` of irevnet_jax, at module level or inside a function,
counts. The layers (WORKSPACE.md states the same rule):

    model/, data/, run/            the bottom: none of them imports another
    baselines/                     networks on model/'s engine
    nets, the package root         one build and one Net above both networks
    train/                         steps, parallel back ends, the loop
    interop/, analysis/, export    users of a trained run
    errors                         below everything: UserError, which every layer raises
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'irevnet_jax'
LAYERS = {
    'errors': -1,
    'model': 0, 'data': 0, 'run': 0,
    'baselines': 1,
    'nets': 2,
    'train': 3,
    'interop': 4, 'analysis': 4, 'export': 4,
}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imported_modules(path: pathlib.Path, known) -> set:
  """The irevnet_jax modules that `path` imports (a name from a package counts as its submodule
  when one of that name exists, else as the package)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.split('.')[0] == 'irevnet_jax')
    elif isinstance(node, ast.ImportFrom) and (node.module or '').split('.')[0] == 'irevnet_jax':
      for alias in node.names:
        sub = f'{node.module}.{alias.name}'
        found.add(sub if sub in known else node.module)
  return found


def graph():
  paths = {module_name(p): p for p in PACKAGE.rglob('*.py')}
  return {name: imported_modules(path, paths) - {name} for name, path in paths.items()}


def group(module: str) -> str:
  """'irevnet_jax.model.norm' -> 'model'; the package root belongs with `nets`, whose API it
  re-exports."""
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else 'nets'


def test_every_group_has_a_layer():
  assert {group(m) for m in graph()} <= set(LAYERS), 'add the new package to LAYERS'


def test_imports_go_down_or_stay_within_their_package():
  upward = [(m, i) for m, imports in graph().items() for i in imports
            if group(i) != group(m) and LAYERS[group(i)] >= LAYERS[group(m)]]
  assert not upward, f'imports that go up or sideways: {upward}'


def test_no_import_circle():
  edges = graph()
  state = {}

  def visit(node, path):
    if state.get(node) == 'done':
      return
    if state.get(node) == 'open':
      cycle = path[path.index(node):] + [node]
      pytest.fail('import circle: ' + ' -> '.join(cycle))
    state[node] = 'open'
    for nxt in sorted(edges.get(node, ())):
      visit(nxt, path + [node])
    state[node] = 'done'

  for module in sorted(edges):
    visit(module, [])


def test_the_model_imports_no_tensorflow_module():
  """`import irevnet_jax` and `invert` need no TensorFlow: only data's tfds_* modules may."""
  edges = graph()
  reach, todo = set(), ['irevnet_jax', 'irevnet_jax.export']
  while todo:
    m = todo.pop()
    if m not in reach:
      reach.add(m)
      todo.extend(edges.get(m, ()))
  tf_modules = {m for m in edges if m.startswith('irevnet_jax.data.tfds_') and m != 'irevnet_jax.data.tfds_options'}
  assert not reach & tf_modules
