"""TFDS pipelines without any download: a tiny ImageNet built by TFDS from fake tars, and
`tfds.testing.mock_data` for CIFAR-10/100 and ImageNet; plus the launch scripts' syntax."""
import glob
import io
import os
import subprocess
import tarfile

import numpy as np
import pytest

from irevnet_jax import tfds_pipeline

tfds = pytest.importorskip('tensorflow_datasets')
tf = pytest.importorskip('tensorflow')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (32, 32, 3)
SYNSETS = ('n01440764', 'n01443537')   # labels 0 and 1 of imagenet2012
TRAIN_PER_CLASS = 9
NUM_VAL = 11


def _gray_jpeg(value, height, width):
  """A constant grey JPEG: survives crops and resizes, so its grey level names the image."""
  return tf.io.encode_jpeg(np.full((height, width, 3), value, np.uint8), quality=100).numpy()


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _train_value(k):
  return 10 + 12 * k   # training image k in [0, 18)


def _val_value(i):
  return 20 * i        # validation image i in [1, 11]


def _ids(images, step):
  """Grey level of each image in [0, 1] -> the id it was made with."""
  return np.round(images.mean(axis=(1, 2, 3)) * 255 / step).astype(int)


@pytest.fixture(scope='module')
def tiny_imagenet(tmp_path_factory):
  """Fake ILSVRC2012 tars in a manual dir, prepared by TFDS as in docs/data_and_launch.md."""
  root = tmp_path_factory.mktemp('imagenet')
  manual = root / 'manual'
  manual.mkdir()
  with tarfile.open(manual / 'ILSVRC2012_img_train.tar', 'w') as train:
    for c, synset in enumerate(SYNSETS):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as sub:
        for j in range(TRAIN_PER_CLASS):
          k = c * TRAIN_PER_CLASS + j
          _add(sub, f'{synset}_{k}.JPEG', _gray_jpeg(_train_value(k), 40 + k, 50))
      _add(train, f'{synset}.tar', inner.getvalue())
  with tarfile.open(manual / 'ILSVRC2012_img_val.tar', 'w') as val:
    for i in range(1, NUM_VAL + 1):
      _add(val, f'ILSVRC2012_val_{i:08d}.JPEG', _gray_jpeg(_val_value(i), 30 + 3 * i, 45))
  builder = tfds_pipeline.prepare('imagenet2012', str(root / 'data'), str(manual))
  # The true label of each validation image, by the id in its grey level.
  ds = builder.as_dataset(split='validation')
  labels = {int(name.decode()[15:23]): int(label)
            for name, label in ((ex['file_name'].numpy(), ex['label'].numpy()) for ex in ds)}
  return {'name': 'imagenet2012', 'data_dir': str(root / 'data'),
          'manual_dir': str(manual)}, labels


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_imagenet_eval_counts_every_image_once_over_1_2_3_processes(tiny_imagenet):
  config, labels = tiny_imagenet
  source = tfds_pipeline.get_tfds_source(config, SHAPE)
  assert source._sizes_known    # the real TFDS path: per-process ReadInstructions
  assert (source.num_train_examples, source.num_eval_examples) == (18, NUM_VAL)
  for count in (1, 2, 3):
    seen, batch_counts = [], set()
    for index in range(count):
      batches = list(source.eval_batches(4, index, count))
      batch_counts.add(len(batches))
      for b in batches:
        assert b['image'].shape == (4, *SHAPE) and b['image'].dtype == np.float32
        assert b['label'].dtype == np.int32 and b['mask'].dtype == np.float32
        real = b['mask'] == 1
        assert np.all(b['image'][~real] == 0) and set(b['mask']) <= {0.0, 1.0}
        ids = _ids(b['image'][real], 20)
        np.testing.assert_allclose(b['image'][real].mean(axis=(1, 2, 3)) * 255, ids * 20,
                                   atol=1.5)   # centre crops of grey images stay grey
        assert [labels[i] for i in ids] == b['label'][real].tolist()
        seen += ids.tolist()
    assert sorted(seen) == list(range(1, NUM_VAL + 1)), count
    assert batch_counts == {source.eval_num_batches(4, count)}, count


def test_imagenet_train_slices_epochs_and_resume(tiny_imagenet):
  config, _ = tiny_imagenet
  source = tfds_pipeline.get_tfds_source(config, SHAPE)
  for count in (1, 2, 3):
    steps = source.train_steps_per_epoch(3, count)
    assert steps == 18 // count // 3
    union = []
    for index in range(count):
      batches = _take(source.train_batches(3, index, count, seed=0), 2 * steps)
      for b in batches:
        assert b['image'].shape == (3, *SHAPE) and b['image'].dtype == np.float32
        assert 0 <= b['image'].min() and b['image'].max() <= 1
        assert b['label'].dtype == np.int32
      epochs = [np.concatenate([b['image'] for b in batches[e * steps:(e + 1) * steps]])
                for e in range(2)]
      ids = [_ids(images, 1) for images in epochs]
      labels = np.concatenate([b['label'] for b in batches[:steps]])
      # Each epoch is a new order of the same examples of this process.
      assert sorted(ids[0]) == sorted(ids[1]) and len(set(ids[0])) == len(ids[0])
      assert labels.tolist() == [int(i >= _train_value(TRAIN_PER_CLASS)) for i in ids[0]]
      union += ids[0].tolist()
    assert sorted(union) == [_train_value(k) for k in range(18)], count   # disjoint slices
  uninterrupted = _take(source.train_batches(3, 1, 2, seed=5), 7)
  assert not np.array_equal(uninterrupted[0]['image'], uninterrupted[3]['image'])
  for start in (2, 3, 5):   # steps per epoch = 3: inside the first epoch, at and after a boundary
    _assert_batches_equal(_take(source.train_batches(3, 1, 2, seed=5, start_step=start),
                                7 - start), uninterrupted[start:])


def test_missing_imagenet_explains_the_manual_download(tmp_path):
  config = {'name': 'imagenet2012', 'data_dir': str(tmp_path / 'data'),
            'manual_dir': str(tmp_path / 'manual')}
  with pytest.raises(FileNotFoundError) as error:
    tfds_pipeline.get_tfds_source(config, (224, 224, 3))
  message = str(error.value)
  for needle in ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar', str(tmp_path / 'manual'),
                 'download_and_prepare', 'tfds build imagenet2012', 'launch/prepare_data.py'):
    assert needle in message
  with pytest.raises(FileNotFoundError, match='ILSVRC2012_img_val.tar'):
    tfds_pipeline.prepare('imagenet2012', str(tmp_path / 'data'), str(tmp_path / 'manual'))


def test_missing_cifar_without_download_says_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError, match='prepare_data.py --dataset=cifar10'):
    tfds_pipeline.get_tfds_source(
        {'name': 'cifar10', 'data_dir': str(tmp_path), 'download': False}, SHAPE)


def test_wrong_model_input_shape_or_fields_are_value_errors():
  with pytest.raises(ValueError, match=r'model.input_shape=\(224, 224, 3\).*\(32, 32, 3\)'):
    tfds_pipeline.get_tfds_source({'name': 'cifar10'}, (224, 224, 3))
  with pytest.raises(ValueError, match='model.input_shape'):
    tfds_pipeline.get_tfds_source({'name': 'imagenet2012'}, (224, 224, 1))
  with pytest.raises(ValueError, match='dataset.normalization'):
    tfds_pipeline.parse_options({'name': 'cifar10', 'normalization': 'zca'})
  with pytest.raises(ValueError, match='dataset.name'):
    tfds_pipeline.parse_options({'name': 'mnist'})
  with pytest.raises(ValueError, match=r"no field\(s\) \['shufle_buffer'\]"):
    tfds_pipeline.parse_options({'name': 'cifar10', 'shufle_buffer': 10})
  opts = tfds_pipeline.parse_options({'name': 'imagenet'})   # only `name` set; an alias
  assert (opts.name, opts.normalization, opts.eval_split, opts.cache) == (
      'imagenet2012', 'unit', 'validation', False)


@pytest.mark.parametrize('name,shape,normalization', [
    ('cifar10', SHAPE, None), ('cifar100', SHAPE, 'unit'),
    ('imagenet2012', (48, 40, 3), None), ('imagenet2012', SHAPE, 'mean_std')])
def test_mock_batches_have_shapes_dtypes_and_ranges(name, shape, normalization):
  config = {'name': name, 'normalization': normalization}
  with tfds.testing.mock_data(num_examples=10):
    source = tfds_pipeline.get_tfds_source(config, shape)
    train = _take(source.train_batches(4, 0, 1, seed=0), 3)
    evals = list(source.eval_batches(4, 0, 1))
    unit_evals = list(tfds_pipeline.get_tfds_source(
        {'name': name, 'normalization': 'unit'}, shape).eval_batches(4, 0, 1))
  assert source.num_classes == {'cifar10': 10, 'cifar100': 100, 'imagenet2012': 1000}[name]
  unit = source.opts.normalization == 'unit'
  low, high = (0, 1) if unit else (-2.5, 2.8)
  for b in train + evals:
    assert b['image'].shape == (4, *shape) and b['image'].dtype == np.float32
    assert b['label'].dtype == np.int32
    assert 0 <= b['label'].min() and b['label'].max() < source.num_classes
    assert low <= b['image'].min() and b['image'].max() <= high
    assert b['image'].max() - b['image'].min() > 0.5 * (high - low)   # random pixels, not blank
  assert [b['mask'].tolist() for b in evals] == [[1] * 4, [1] * 4, [1, 1, 0, 0]]
  spec = tfds_pipeline.SPECS[name]
  for b, u in zip(evals, unit_evals):   # 'mean_std' is the per-channel standardised 'unit'
    real = b['mask'] == 1
    expected = u['image'] if unit else (u['image'] - np.float32(spec.mean)) / np.float32(spec.std)
    np.testing.assert_allclose(b['image'][real], expected[real], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('name', ['cifar10', 'imagenet2012'])
def test_mock_resume_gives_the_uninterrupted_batches(name):
  with tfds.testing.mock_data(num_examples=10):
    source = tfds_pipeline.get_tfds_source({'name': name}, SHAPE)
    uninterrupted = _take(source.train_batches(4, 0, 1, seed=3), 5)   # 2 steps per epoch
    resumed = _take(source.train_batches(4, 0, 1, seed=3, start_step=3), 2)
    other_seed = next(source.train_batches(4, 0, 1, seed=4))
  _assert_batches_equal(resumed, uninterrupted[3:])
  assert not np.array_equal(other_seed['image'], uninterrupted[0]['image'])
  # Epoch 1 re-augments the same examples: crops and flips differ from epoch 0.
  assert not np.array_equal(uninterrupted[0]['image'], uninterrupted[2]['image'])


def test_mock_eval_splits_cover_the_split_once():
  with tfds.testing.mock_data(num_examples=11):
    source = tfds_pipeline.get_tfds_source({'name': 'cifar10'}, SHAPE)
    assert not source._sizes_known    # mock_data has no split metadata: skip/take slices
    whole = np.concatenate([b['image'][b['mask'] == 1] for b in source.eval_batches(3, 0, 1)])
    assert len(whole) == 11 and len({x.tobytes() for x in whole}) == 11
    for count in (2, 3):
      parts = [list(source.eval_batches(3, index, count)) for index in range(count)]
      assert len({len(p) for p in parts}) == 1
      joined = np.concatenate([b['image'][b['mask'] == 1] for p in parts for b in p])
      np.testing.assert_array_equal(joined, whole)


def test_launch_scripts_are_valid():
  scripts = sorted(glob.glob(os.path.join(REPO, 'launch', '*.sh')))
  assert len(scripts) >= 3
  for path in scripts:
    subprocess.run(['bash', '-n', path], check=True)
    with open(path) as f:
      head = f.read(2000)
    assert 'experiments.main' in head or 'prepare_data' in head, path
  for path in glob.glob(os.path.join(REPO, 'launch', '*.py')):
    with open(path) as f:
      compile(f.read(), path, 'exec')
