"""The authors' CIFAR checkpoint layout read with real PyTorch (issue 18 item 3).

CIFAR_main.py saves {'model': the whole nn.DataParallel(iRevNet), 'acc', 'epoch'}. With
weights_only=False and a `models.iRevNet` module importable, the state dict is taken out
of 'model'; without the module, one line says to put their code on PYTHONPATH. The
module here is a stand-in (a torch module tree with the fixture's keys), written to a
temporary folder, so the test needs PyTorch but not the authors' code.
"""
import collections
import sys

import pytest

from irevnet_jax.interop import authors
from authors_fixture import NPZ, needs_torch, torch
from model_utils import assert_same_state_dict

STAND_IN = '''
import torch

class iRevNet(torch.nn.Module):
  """Modules and tensors under the keys of a state dict (no forward)."""

  def __init__(self, state_dict):
    super().__init__()
    for key, value in state_dict.items():
      *path, name = key.split('.')
      module = self
      for part in path:
        if not hasattr(module, part):
          module.add_module(part, torch.nn.Module())
        module = getattr(module, part)
      if value.is_floating_point():
        module.register_parameter(name, torch.nn.Parameter(value.clone()))
      else:
        module.register_buffer(name, value.clone())
'''


@pytest.fixture
def cifar_checkpoint(tmp_path, monkeypatch):
  """(path, state dict): the file their CIFAR_main.py would write for the fixture's weights."""
  (tmp_path / 'code' / 'models').mkdir(parents=True)
  (tmp_path / 'code' / 'models' / '__init__.py').write_text('')
  (tmp_path / 'code' / 'models' / 'iRevNet.py').write_text(STAND_IN)
  monkeypatch.syspath_prepend(str(tmp_path / 'code'))
  from models.iRevNet import iRevNet  # pylint: disable=g-import-not-at-top,import-error
  expected = authors.load_state_dict(NPZ)
  bare = collections.OrderedDict((k[len('module.'):], torch.from_numpy(v))
                                 for k, v in expected.items())
  path = str(tmp_path / 'ckpt.t7')
  torch.save({'model': torch.nn.DataParallel(iRevNet(bare)), 'acc': 94.8, 'epoch': 200}, path)
  yield path, expected
  for name in ('models.iRevNet', 'models'):
    sys.modules.pop(name, None)


@needs_torch
def test_weights_only_false_takes_the_state_dict_out_of_the_model(cifar_checkpoint):
  path, expected = cifar_checkpoint
  with pytest.raises(authors.CheckpointFormatError, match="pickles a whole model"):
    authors.load_state_dict(path)
  got = authors.load_state_dict(path, weights_only=False)
  assert_same_state_dict(got, expected)   # 'module.' keys, as their DataParallel saves them


@needs_torch
def test_without_their_code_one_line_names_pythonpath(cifar_checkpoint, monkeypatch):
  path, _ = cifar_checkpoint
  monkeypatch.setattr(sys, 'path', [p for p in sys.path if not p.endswith('code')])
  for name in ('models.iRevNet', 'models'):
    monkeypatch.delitem(sys.modules, name)
  with pytest.raises(authors.CheckpointFormatError) as info:
    authors.load_state_dict(path, weights_only=False)
  message = str(info.value)
  assert "pickles a class of module 'models'" in message and 'PYTHONPATH' in message
  assert '\n' not in message and '\x1b' not in message
