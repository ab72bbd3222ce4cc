"""The import graph of the package and the benchmarks: layers import only downwards, nothing
imports in a circle, and a module takes each name from the module that defines it.

Every `import` / `from ... import` of irevnet_jax or benchmarks, at module level or inside a
function, counts. The layers (WORKSPACE.md states the same rule):

    model/, data/, run/            the bottom: none of them imports another
    baselines/                     networks on model/'s engine
    nets, the package root         one build and one Net above both networks
    train/                         steps, parallel back ends, the loop
    interop/, analysis/, export    users of a trained run
    benchmarks/                    users of everything above
    errors                         below everything: UserError, which every layer raises
"""
import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'irevnet_jax'
SCANNED = ('irevnet_jax', 'benchmarks')
LAYERS = {
    'errors': -1,
    'model': 0, 'data': 0, 'run': 0,
    'baselines': 1,
    'nets': 2,
    'train': 3,
    'interop': 4, 'analysis': 4, 'export': 4,
    'benchmarks': 5,
}
# Packages whose __init__ is a public API for users (the README's names): modules of this
# repository import the modules behind it instead.
PUBLIC_FACADES = {'irevnet_jax', 'irevnet_jax.train', 'irevnet_jax.analysis',
                  'irevnet_jax.interop'}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _ours(module) -> bool:
  return (module or '').split('.')[0] in SCANNED


def imported_modules(path: pathlib.Path, known) -> set:
  """The modules of this repository that `path` imports (a name from a package counts as its
  submodule when one of that name exists, else as the package)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if _ours(a.name))
    elif isinstance(node, ast.ImportFrom) and _ours(node.module):
      for alias in node.names:
        sub = f'{node.module}.{alias.name}'
        found.add(sub if sub in known else node.module)
  return found


def module_paths():
  return {module_name(p): p for root in SCANNED for p in (REPO / root).rglob('*.py')}


def graph():
  paths = module_paths()
  return {name: imported_modules(path, paths) - {name} for name, path in paths.items()}


def group(module: str) -> str:
  """'irevnet_jax.model.norm' -> 'model', 'benchmarks.speed' -> 'benchmarks'; the package
  root belongs with `nets`, whose API it re-exports."""
  parts = module.split('.')
  if parts[0] == 'benchmarks':
    return 'benchmarks'
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


def test_train_builds_its_networks_through_nets():
  """WORKSPACE.md: train/ depends on nets.py (not on the package root that re-exports it)."""
  imports = graph()['irevnet_jax.train.program']
  assert 'irevnet_jax.nets' in imports and 'irevnet_jax' not in imports, imports


def _names_bound_by_imports(tree) -> set:
  """The names that a module's top-level imports bind (what another module could re-export)."""
  names = set()
  for node in tree.body:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      names.update((a.asname or a.name).split('.')[0] for a in node.names)
  return names


def _module_aliases(tree, known) -> dict:
  """{local name: module} for every `import m as x` / `from p import m` of our modules."""
  aliases = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if _ours(a.name) and (a.asname or '.' not in a.name):
          aliases[a.asname or a.name] = a.name
    elif isinstance(node, ast.ImportFrom) and _ours(node.module):
      for a in node.names:
        if f'{node.module}.{a.name}' in known:
          aliases[a.asname or a.name] = f'{node.module}.{a.name}'
  return aliases


def test_modules_take_each_name_from_the_module_that_defines_it():
  """No `module.name` or `from module import name` where `module` only imported `name`
  (a re-export), and no import of a public facade (`irevnet_jax`, `irevnet_jax.train`, ...)
  from inside the repository's modules."""
  paths = module_paths()
  trees = {name: ast.parse(path.read_text()) for name, path in paths.items()}
  reexported = {name: _names_bound_by_imports(tree) for name, tree in trees.items()}
  found = []
  for name, tree in trees.items():
    aliases = _module_aliases(tree, paths)
    for node in ast.walk(tree):
      if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        target = aliases.get(node.value.id)
        if target in reexported and node.attr in reexported[target] and (
            f'{target}.{node.attr}' not in paths):
          found.append(f'{name}: {node.value.id}.{node.attr}')
      elif isinstance(node, ast.ImportFrom) and node.module in reexported:
        found += [f'{name}: from {node.module} import {a.name}' for a in node.names
                  if a.name in reexported[node.module]
                  and f'{node.module}.{a.name}' not in paths]
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        imported = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module])
        found += [f'{name}: imports the facade {m}' for m in imported
                  if m in PUBLIC_FACADES and not paths[m].samefile(paths[name])
                  and not (isinstance(node, ast.ImportFrom) and all(
                      f'{m}.{a.name}' in paths for a in node.names))]
  assert not found, 'import names from the module that defines them: ' + '; '.join(found)
