"""The fixture made with the authors' PyTorch code (tests/fixtures/authors_irevnet/README.md)
and PyTorch, an optional extra: the tests of `.pth` files skip without it."""
import os

import pytest

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'authors_irevnet')
NPZ = os.path.join(FIXTURES, 'checkpoint_tiny_state_dict.npz')   # their state dict, as .npz
PTH_TAR = os.path.join(FIXTURES, 'checkpoint_tiny.pth.tar')      # their checkpoint file
OUTPUTS = os.path.join(FIXTURES, 'outputs_tiny.npz')             # float64 outputs of their model

try:
  import torch
except ImportError:
  torch = None
needs_torch = pytest.mark.skipif(
    torch is None, reason="PyTorch is not installed (pip install -e '.[torch]'): "
    'the .pth / .pth.tar paths are not tested')
