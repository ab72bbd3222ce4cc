"""benchmarks/authors_torch.py on the authors' own code: skipped without PyTorch or without
their checkout (AUTHORS_REPO, else .authors/ at the repository root; benchmarks/gpu.sh)."""
import json
import math
import os
import sys

import pytest

from authors_fixture import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.environ.get('AUTHORS_REPO') or os.path.join(ROOT, '.authors')
needs_torch = pytest.mark.skipif(torch is None, reason='PyTorch is not installed')
needs_their_code = pytest.mark.skipif(
    not os.path.isfile(os.path.join(REPO, 'models', 'iRevNet.py')),
    reason="no checkout of the authors' code: set AUTHORS_REPO (benchmarks/gpu.sh's top)")


@pytest.fixture
def authors_torch(monkeypatch):
  """The module, with sys.path and their `models` package undone afterwards."""
  monkeypatch.setattr(sys, 'path', list(sys.path))
  from benchmarks import authors_torch as module  # pylint: disable=g-import-not-at-top
  yield module
  for name in [n for n in sys.modules if n == 'models' or n.startswith('models.')]:
    del sys.modules[name]


@needs_torch
@needs_their_code
def test_their_models_have_the_released_sizes_and_a_smoke_step_trains(authors_torch, tmp_path):
  irevnet_class = authors_torch.import_authors_class(REPO)
  for model, params in (('cifar10', 6_274_826), ('bijective_released', 125_120_356)):
    net, _ = authors_torch.build(irevnet_class, model, False, torch.device('meta'))
    assert sum(p.numel() for p in net.parameters()) == params, model   # reference notes §2

  out = tmp_path / 'rows.json'
  authors_torch.main([f'--authors_repo={REPO}', '--smoke', '--models=cifar10', '--modes=eager',
                      '--batches=2', '--min_seconds=0', f'--json_out={out}'])
  (row,) = json.loads(out.read_text())['rows']
  assert (row['what'], row['mode'], row['batch'], row['blocks']) == ('authors', 'eager', 2, 3)
  assert row['img_s'] > 0 and math.isfinite(float(row['note'].split()[-1])), row
