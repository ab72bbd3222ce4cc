"""irevnet_jax.interop.authors against a tiny i-RevNet made with the authors' PyTorch code.

The fixture (tests/fixtures/authors_irevnet/README.md) holds its checkpoint in their format, the
same state dict as .npz, and float64 outputs of their model. Here: those outputs reproduced in
float64, state dicts round-tripped exactly, files written and read back, and every bad input
rejected with an error that names the fix. The PyTorch file tests skip without PyTorch.
"""
import collections
import functools
import os
import pickle
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import irevnet_jax
from irevnet_jax.model import blocks, ops, presets
from irevnet_jax.interop import authors, state_dict_files
from authors_fixture import NPZ, OUTPUTS, PTH_TAR, needs_torch, torch
from model_utils import assert_same_state_dict


def tiny_config(**overrides):
  """The fixture's model: iRevNet(nBlocks=[2, 2], nStrides=[2, 2], nChannels=[24, 96],
  nClasses=5, init_ds=2, dropout_rate=0, in_shape=[3, 64, 64]), kernels (3, 3, 3)."""
  c = presets.base()
  c.input_shape = (64, 64, 3)
  c.init_ds = 2
  c.blocks = (2, 2)
  c.strides = (2, 2)
  c.widths = (24, 96)
  c.num_classes = 5
  for key, value in overrides.items():
    c[key] = value
  return c


def nhwc(a):
  return np.asarray(a).transpose(0, 2, 3, 1)


def nchw(a):
  return np.asarray(a).transpose(0, 3, 1, 2)


def max_rel(a, b):
  """max |a - b| / max |b|."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope='module')
def state_dict():
  return authors.load_state_dict(NPZ)


@pytest.fixture(scope='module')
def outputs():
  with np.load(OUTPUTS) as f:
    return dict(f)


@functools.lru_cache(maxsize=None)
def _float64_functions():
  """The fixture's net in float64 and its jitted forward / invert (compiled once per module)."""
  net = irevnet_jax.build(tiny_config(dtype='float64'))
  return net, jax.jit(net.forward), jax.jit(net.invert)


def _block_outputs(net, variables, x):
  """[psi(x), the pair after stack.0, stack.1, ...] (merged, NHWC), one block at a time."""
  arch = net.arch
  pair = ops.split(ops.psi(jnp.asarray(x), arch.init_ds))
  merged = [ops.merge(*pair)]
  for s, stage in enumerate(arch.stages):
    runs = [(stage.first, 'first', None)] + [(stage.rest, 'rest', r) for r in range(stage.num_rest)]
    for spec, group, row in runs:
      take = (lambda a: a) if row is None else (lambda a, r=row: a[r])
      f_vars = {c: jax.tree_util.tree_map(take, variables[c][f'stages_{s}'][group])
                for c in ('params', 'batch_stats')}
      f = functools.partial(blocks.apply_bottleneck, blocks.make_bottleneck(arch, spec), f_vars,
                            train=False, key=None)
      pair, _ = blocks.block_forward(spec, f, pair)
      merged.append(ops.merge(*pair))
  return [np.asarray(h) for h in merged]


def run_float64(state_dict, x, z_authors):
  """Loads `state_dict` into the float64 net; its outputs as float64 numpy arrays, NCHW."""
  with jax.enable_x64(True):
    net, forward, invert = _float64_functions()
    variables = authors.to_variables(state_dict, tiny_config(dtype='float64'))
    logits, z = forward(variables, nhwc(x))
    intermediates = _block_outputs(net, variables, nhwc(x[:1]))
    return {'logits': np.asarray(logits), 'z': nchw(z),
            'x_inv': nchw(invert(variables, nhwc(z_authors))),
            'x_back': nchw(invert(variables, z)),
            'dtypes': {str(np.asarray(a).dtype) for a in (logits, z)}
                      | {str(leaf.dtype) for leaf in jax.tree_util.tree_leaves(variables)},
            'h_stem': nchw(intermediates[0]),
            **{f'h_block{i}': nchw(h) for i, h in enumerate(intermediates[1:])}}


@pytest.fixture(scope='module')
def npz_run(state_dict, outputs):
  return run_float64(state_dict, outputs['x'], outputs['z'])


class TestReproducesTheAuthorsModel:

  def test_logits_z_and_inverse_to_1e_10(self, npz_run, outputs):
    assert npz_run['dtypes'] == {'float64'}
    for name in ('logits', 'z', 'x_inv'):
      assert npz_run[name].shape == outputs[name].shape
      assert max_rel(npz_run[name], outputs[name]) <= 1e-10, name

  def test_invert_gives_x_back_to_1e_12(self, npz_run, outputs):
    assert max_rel(npz_run['x_inv'], outputs['x']) <= 1e-12   # from the authors' z
    assert max_rel(npz_run['x_back'], outputs['x']) <= 1e-12  # from our own z

  def test_every_block_to_1e_10(self, npz_run, outputs):
    for name in ('h_stem', 'h_block0', 'h_block1', 'h_block2'):
      assert max_rel(npz_run[name], outputs[name]) <= 1e-10, name
    assert max_rel(npz_run['h_block3'], outputs['z'][:1]) <= 1e-10

  @needs_torch
  def test_the_pth_tar_gives_the_same_state_dict_and_outputs(self, state_dict, npz_run, outputs):
    from_pth = authors.load_state_dict(PTH_TAR)
    assert_same_state_dict(from_pth, state_dict)
    pth_run = run_float64(from_pth, outputs['x'], outputs['z'])
    for name in ('logits', 'z', 'x_inv', 'x_back'):
      np.testing.assert_array_equal(pth_run[name], npz_run[name])
      assert max_rel(pth_run[name], outputs['x' if name == 'x_back' else name]) <= 1e-10


class TestRoundTrip:

  def test_state_dict_to_variables_and_back_is_exact(self, state_dict):
    config = tiny_config()
    variables = authors.to_variables(state_dict, config)
    back = authors.from_variables(variables, config, num_batches_tracked=state_dict)
    assert_same_state_dict(back, state_dict)

  def test_without_prefix_or_counters_they_stay_absent(self, state_dict):
    bare = collections.OrderedDict((k[len('module.'):], v) for k, v in state_dict.items()
                                   if not k.endswith('num_batches_tracked'))
    config = tiny_config()
    variables = authors.to_variables(bare, config)
    back = authors.from_variables(variables, config, prefix='', num_batches_tracked=bare)
    assert_same_state_dict(back, bare)
    assert len(back) == 74 - 12          # 12 BatchNorms: 2 + 3 + 3 + 3 in the blocks, bn1
    counted = authors.from_variables(variables, config)     # default: 'module.', counters 0
    assert len(counted) == 74 and counted['module.bn1.num_batches_tracked'] == 0
    assert counted['module.bn1.num_batches_tracked'].dtype == np.int64

  def test_float64_variables_export_exactly_as_float32(self, state_dict, x64):
    config = tiny_config(dtype='float64')
    variables = authors.to_variables(state_dict, config)
    assert variables['params']['stages_1']['rest']['Conv_0']['kernel'].shape == (1, 3, 3, 96, 24)
    back = authors.from_variables(variables, config, num_batches_tracked=state_dict,
                                  dtype=np.float32)
    assert_same_state_dict(back, state_dict)

  def test_a_whole_checkpoint_dict_is_accepted(self, state_dict):
    checkpoint = {'epoch': 128, 'arch': 'irevnet', 'state_dict': state_dict, 'best_prec1': 71.25,
                  'optimizer': {'state': {}, 'param_groups': []}}
    a = authors.to_variables(checkpoint, tiny_config())
    b = authors.to_variables(state_dict, tiny_config())
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)

  def test_npz_file_round_trip(self, state_dict, tmp_path):
    path = str(tmp_path / 'export.npz')
    authors.save_state_dict(path, state_dict)
    assert_same_state_dict(authors.load_state_dict(path), state_dict)
    assert os.listdir(tmp_path) == ['export.npz']

  @needs_torch
  def test_pth_tar_is_written_in_the_authors_checkpoint_format(self, state_dict, tmp_path):
    bare = collections.OrderedDict((k[len('module.'):], v) for k, v in state_dict.items())
    path = str(tmp_path / 'export.pth.tar')
    authors.save_state_dict(path, bare, epoch=3, best_prec1=50.0)
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    assert list(checkpoint) == ['epoch', 'arch', 'state_dict', 'best_prec1', 'optimizer']
    assert checkpoint['epoch'] == 3 and checkpoint['best_prec1'] == 50.0
    assert checkpoint['arch'] == 'irevnet'
    assert list(checkpoint['state_dict']) == list(state_dict)     # prefixed 'module.'
    assert len(checkpoint['optimizer']['param_groups'][0]['params']) == 38
    assert_same_state_dict(authors.load_state_dict(path), state_dict)

  @needs_torch
  def test_zip_format_pth_and_the_npz_snippet(self, state_dict, tmp_path):
    tensors = collections.OrderedDict((k, torch.from_numpy(v)) for k, v in state_dict.items())
    torch.save(tensors, tmp_path / 'bare.pth')                      # zip format, bare state dict
    assert zipfile.is_zipfile(tmp_path / 'bare.pth')
    assert_same_state_dict(authors.load_state_dict(tmp_path / 'bare.pth'), state_dict)
    copy = str(tmp_path / 'released.pth.tar')
    with open(PTH_TAR, 'rb') as src, open(copy, 'wb') as dst:
      dst.write(src.read())
    exec(state_dict_files.npz_snippet(copy), {})  # pylint: disable=exec-used  (as the error shows)
    assert_same_state_dict(authors.load_state_dict(tmp_path / 'released.npz'), state_dict)


def _error(fn, *args, **kwargs):
  with pytest.raises(ValueError) as info:
    fn(*args, **kwargs)
  return str(info.value)


class TestClearErrors:

  def test_a_missing_key_is_named(self, state_dict):
    broken = collections.OrderedDict(state_dict)
    del broken['module.stack.2.bottleneck_block.5.weight']
    message = _error(authors.to_variables, broken, tiny_config())
    assert 'missing' in message and 'stack.2.bottleneck_block.5.weight' in message

  def test_an_unexpected_key_is_named(self, state_dict):
    broken = collections.OrderedDict(state_dict)
    broken['module.stack.1.bottleneck_block.4.weight'] = np.zeros(6, np.float32)
    message = _error(authors.to_variables, broken, tiny_config())
    assert 'unexpected' in message and 'stack.1.bottleneck_block.4.weight' in message

  @pytest.mark.parametrize('overrides,named', [
      ({'blocks': (2, 3)}, 'model.blocks=(2, 2)'),
      ({'blocks': (1, 3)}, 'model.blocks=(2, 2)'),
      ({'strides': (1, 2), 'widths': (6, 24)}, 'model.widths=(24, 96)'),
      ({'kernel_sizes': (1, 3, 1)}, 'model.kernel_sizes=(3, 3, 3)'),
      ({'bottleneck_mult': 2}, 'model.bottleneck_mult=4'),
      ({'num_classes': 10}, 'model.num_classes=5'),
  ])
  def test_a_config_that_does_not_fit_names_the_field_and_the_files_value(
      self, state_dict, overrides, named):
    message = _error(authors.to_variables, state_dict, tiny_config(**overrides))
    assert named in message

  def test_a_shape_mismatch_names_the_entry_both_shapes_and_the_fields(self, state_dict):
    broken = collections.OrderedDict(state_dict)
    broken['module.stack.3.bottleneck_block.9.weight'] = np.zeros((48, 24, 3, 3), np.float32)
    message = _error(authors.to_variables, broken, tiny_config())
    assert ('1 shape(s) differ: stack.3.bottleneck_block.9.weight is (48, 24, 3, 3) in the file, '
            '(96, 24, 3, 3) in this config (conv k3 of block 3 (stage 1))') in message
    assert 'model.widths' in message and 'model.blocks' in message

  def test_variables_of_another_config_do_not_export(self, state_dict):
    variables = authors.to_variables(state_dict, tiny_config())
    message = _error(authors.from_variables, variables, tiny_config(blocks=(2, 3)))
    assert 'not those of this model config' in message

  @pytest.mark.parametrize('name,content', [
      ('random.pth.tar', np.random.default_rng(0).bytes(1000)),
      ('random.npz', np.random.default_rng(1).bytes(1000)),
      ('notes.pth.tar', b'epoch 128\nbest_prec1 71.25\n'),
      ('empty.pth', b''),
      ('plain_pickle.pth', pickle.dumps({'state_dict': {'a': 1}}, protocol=2)),
  ])
  def test_a_file_that_is_not_a_checkpoint(self, tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(authors.CheckpointFormatError, match='not a checkpoint|cannot be read'):
      authors.load_state_dict(tmp_path / name)

  def test_a_zip_that_is_neither_npz_nor_torch(self, tmp_path):
    with zipfile.ZipFile(tmp_path / 'other.npz', 'w') as archive:
      archive.writestr('readme.txt', 'hello')
    with pytest.raises(authors.CheckpointFormatError, match='neither a NumPy .npz'):
      authors.load_state_dict(tmp_path / 'other.npz')

  @needs_torch
  def test_a_pytorch_file_without_a_state_dict(self, tmp_path):
    torch.save([1, 2, 3], tmp_path / 'list.pth')
    torch.save({'epoch': 1}, tmp_path / 'legacy.pth.tar', _use_new_zipfile_serialization=False)
    for name in ('list.pth', 'legacy.pth.tar'):
      with pytest.raises(authors.CheckpointFormatError, match='not a state dict'):
        authors.load_state_dict(tmp_path / name)

  def test_pth_tar_without_pytorch_names_the_extra_and_the_npz_route(self, monkeypatch, tmp_path,
                                                                      state_dict):
    monkeypatch.setitem(sys.modules, 'torch', None)   # `import torch` now raises ImportError
    with pytest.raises(authors.PyTorchMissingError) as info:
      authors.load_state_dict(PTH_TAR)
    message = str(info.value)
    assert "pip install -e '.[torch]'" in message and '.npz' in message and 'np.savez' in message
    with pytest.raises(authors.PyTorchMissingError, match=r"\.npz instead"):
      authors.save_state_dict(tmp_path / 'export.pth.tar', state_dict)
    assert os.listdir(tmp_path) == []

  def test_an_unknown_suffix_writes_nothing(self, tmp_path, state_dict):
    with pytest.raises(ValueError, match='Unknown suffix'):
      authors.save_state_dict(tmp_path / 'export.h5', state_dict)
    assert os.listdir(tmp_path) == []

  def test_a_write_that_fails_midway_leaves_the_earlier_file(self, tmp_path, state_dict,
                                                             monkeypatch):
    """experiments.export_weights' file appears whole or not at all: a serializer that
    fails after writing part leaves the earlier export as it was and no temporary file."""
    path = tmp_path / 'export.npz'
    authors.save_state_dict(path, state_dict)
    before = path.read_bytes()

    def savez_then_fail(file, **arrays):
      file.write(b'PK\x03\x04 half an archive')
      raise OSError('No space left on device')
    monkeypatch.setattr(np, 'savez', savez_then_fail)
    with pytest.raises(OSError, match='No space left'):
      authors.save_state_dict(path, {k: np.asarray(v) + 1 for k, v in state_dict.items()})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ['export.npz']
    with pytest.raises(OSError, match='No space left'):
      authors.save_state_dict(tmp_path / 'new.npz', state_dict)
    assert os.listdir(tmp_path) == ['export.npz']


def test_released_config_in_shapes_only(tmp_path):
  """presets.bijective_released() <-> the released file's layout, without allocating weights."""
  config = presets.bijective_released()
  net = irevnet_jax.build(config)
  shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, *net.input_shape), jnp.float32))
  state = authors.from_variables(shapes, config)
  assert len(state) == 1802
  assert len(authors.from_variables(shapes, config, num_batches_tracked=None)) == 1502
  weights = [v for k, v in state.items() if k.endswith(('.weight', '.bias'))]
  assert len(weights) == 902 and sum(int(np.prod(v.shape)) for v in weights) == 125_120_356
  assert state['module.stack.99.bottleneck_block.9.weight'].shape == (1536, 384, 3, 3)
  assert state['module.linear.weight'].shape == (1000, 3072)
  assert list(state)[:2] == ['module.stack.0.bottleneck_block.0.weight',
                             'module.stack.0.bottleneck_block.1.weight']
  with pytest.raises(TypeError, match='shapes only'):
    authors.save_state_dict(tmp_path / 'shapes.npz', state)
  assert os.listdir(tmp_path) == []
  back = authors.to_variables(state, config)
  alike = lambda a, b: a.shape == b.shape and a.dtype == b.dtype
  same = jax.tree_util.tree_map(alike, back, shapes)
  assert jax.tree_util.tree_all(same)


def test_importing_the_converter_does_not_import_torch():
  code = ('import sys\nfrom irevnet_jax.interop import authors\n'
          'assert "torch" not in sys.modules, "torch was imported"\n')
  subprocess.run([sys.executable, '-c', code], check=True)
