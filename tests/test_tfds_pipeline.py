"""TFDS pipelines without any download: a tiny ImageNet built by TFDS from fake tars, and
`tfds.testing.mock_data` for CIFAR-10/100 and ImageNet; the augmentation ops; plus the
launch scripts' syntax."""
import colorsys
import contextlib
import glob
import io
import os
import subprocess
import tarfile
from unittest import mock

import numpy as np
import pytest

from irevnet_jax.data import data_order, tfds_options, tfds_pipeline, tfds_records
from irevnet_jax.errors import UserError

tfds = pytest.importorskip('tensorflow_datasets')
tf = pytest.importorskip('tensorflow')

from irevnet_jax.data import tfds_augment, tfds_prepare  # noqa: E402  (needs TensorFlow)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (32, 32, 3)
SYNSETS = ('n01440764', 'n01443537')   # labels 0 and 1 of imagenet2012
TRAIN_PER_CLASS = 9
NUM_TRAIN = 2 * TRAIN_PER_CLASS
NUM_VAL = 11
NO_JITTER = {f: 0.0 for f in tfds_options.JITTER_FIELDS}


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
  """Grey level of each uint8 image -> the id it was made with."""
  return np.round(images.mean(axis=(1, 2, 3)) / step).astype(int)


def _write_tars(manual):
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


@pytest.fixture(scope='module')
def tiny_imagenet(tmp_path_factory):
  """Fake ILSVRC2012 tars in a manual dir, prepared by TFDS as in docs/data_and_launch.md
  (ArrayRecord), and the same tars prepared in TFRecord (as before issue 13)."""
  root = tmp_path_factory.mktemp('imagenet')
  manual = root / 'manual'
  manual.mkdir()
  _write_tars(manual)
  builder = tfds_records.prepare('imagenet2012', str(root / 'data'), str(manual))
  assert tfds_prepare.file_formats(builder) == {'array_record'}
  old = tfds.builder('imagenet2012', data_dir=str(root / 'tfrecord'), file_format='tfrecord')
  old.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  # The true label of each validation image, by the id in its grey level.
  ds = old.as_dataset(split='validation')
  labels = {int(name.decode()[15:23]): int(label)
            for name, label in ((ex['file_name'].numpy(), ex['label'].numpy()) for ex in ds)}
  config = {'name': 'imagenet2012', 'data_dir': str(root / 'data'), 'manual_dir': str(manual)}
  return config, labels, root


@contextlib.contextmanager
def _mock_data(num_examples):
  """`tfds.testing.mock_data` with a working batched read: TFDS 4.9.10 sets the mocked
  reader's `__getitems__` as an instance attribute (MagicMock binds only the dunders it
  knows), so it is called without `self` and fails; this gives it the signature it gets.
  The mocked datasets are there: the file-system check for ImageNet's folder is off."""
  def getitems(record_keys, generator, serialized=False):
    del serialized
    return [generator[int(k)] for k in record_keys]
  with mock.patch('tensorflow_datasets.testing.mocking._getitems', getitems), \
      mock.patch.object(tfds_records, 'refuse_missing_imagenet', lambda opts: None), \
      tfds.testing.mock_data(num_examples=num_examples):
    yield


def _source(dataset_config, model_input_shape):
  """The TFDS source of `dataset_config` for a model of `model_input_shape`."""
  return tfds_pipeline.TfdsSource(tfds_options.parse_options(dataset_config, model_input_shape))


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


class _CountingReads:
  """A data source that records the keys read from it, one list per batched read."""

  def __init__(self, source):
    self.source, self.reads = source, []

  def __len__(self):
    return len(self.source)

  def __getitem__(self, key):
    raise AssertionError('the pipeline reads one record at a time')

  def __getitems__(self, keys):
    self.reads.append([int(k) for k in keys])
    return self.source.__getitems__(keys)

  @property
  def keys(self):
    return [k for read in self.reads for k in read]


# ---------------------------------------------------------------------------------------------
# The tiny ImageNet: real TFDS preparation, grey images that name themselves.

def _check_eval_pass(source, labels, count):
  """Every validation image once over `count` processes, with its index and label."""
  seen, batch_counts = [], set()
  for index in range(count):
    batches = list(source.eval_batches(4, index, count))
    batch_counts.add(len(batches))
    for b in batches:
      assert b['image'].shape == (4, *SHAPE) and b['image'].dtype == np.uint8
      assert b['label'].dtype == np.int32 and b['mask'].dtype == np.float32
      assert b['index'].dtype == np.int32
      real = b['mask'] == 1
      assert np.all(b['image'][~real] == 0) and set(b['mask']) <= {0.0, 1.0}
      assert np.all(b['index'][~real] == -1)
      ids = _ids(b['image'][real], 20)
      np.testing.assert_allclose(b['image'][real].mean(axis=(1, 2, 3)), ids * 20,
                                 atol=1.5)   # centre crops of grey images stay grey
      assert [labels[i] for i in ids] == b['label'][real].tolist()
      seen += list(zip(b['index'][real].tolist(), ids.tolist()))
  assert sorted(i for i, _ in seen) == list(range(NUM_VAL)), count   # same numbering
  assert sorted(i for _, i in seen) == list(range(1, NUM_VAL + 1)), count
  assert batch_counts == {source.eval_num_batches(4, count)}, count
  return dict(seen)


def test_imagenet_eval_counts_every_image_once_over_1_2_3_processes(tiny_imagenet):
  config, labels, _ = tiny_imagenet
  source = _source(config, SHAPE)
  assert (source.num_train_examples, source.num_eval_examples) == (NUM_TRAIN, NUM_VAL)
  numbering = [_check_eval_pass(source, labels, count) for count in (1, 2, 3)]
  assert numbering[0] == numbering[1] == numbering[2]


def test_imagenet_train_epochs_slices_and_resume(tiny_imagenet):
  config, _, _ = tiny_imagenet
  source = _source(dict(config, **NO_JITTER), SHAPE)
  one_process = None
  for count in (1, 2, 3):                    # global batch 6: 3 steps per epoch
    local = 6 // count
    runs = [_take(source.train_batches(local, p, count, seed=0), 6) for p in range(count)]
    for run in runs:
      for b in run:
        assert b['image'].shape == (local, *SHAPE) and b['image'].dtype == np.uint8
        assert b['label'].dtype == np.int32
        ids = _ids(b['image'], 1)
        assert b['label'].tolist() == [int(i >= _train_value(TRAIN_PER_CLASS)) for i in ids]
    # Global batches: the processes' rows side by side, the same for every process count.
    steps = [np.concatenate([_ids(run[s]['image'], 1) for run in runs]) for s in range(6)]
    epochs = [np.concatenate(steps[e * 3:(e + 1) * 3]) for e in range(2)]
    for ids in epochs:                        # disjoint slices, every image once an epoch
      assert sorted(ids) == [_train_value(k) for k in range(NUM_TRAIN)], count
    assert epochs[0].tolist() != epochs[1].tolist()   # a new order each epoch
    one_process = one_process or epochs
    assert [e.tolist() for e in epochs] == [e.tolist() for e in one_process], count
  uninterrupted = _take(source.train_batches(3, 1, 2, seed=5), 7)
  assert not np.array_equal(uninterrupted[0]['image'], uninterrupted[3]['image'])
  for start in (2, 3, 5):   # 3 steps an epoch: inside the first epoch, at and after a boundary
    _assert_batches_equal(_take(source.train_batches(3, 1, 2, seed=5, start_step=start),
                                7 - start), uninterrupted[start:])


def test_imagenet_augmentation_is_a_function_of_seed_example_and_epoch(tiny_imagenet):
  config, _, _ = tiny_imagenet
  source = _source(config, SHAPE)   # default jitter: the paper's
  batches = _take(source.train_batches(6, 0, 1, seed=1), 6)   # 2 epochs of 3 steps
  order = data_order.TrainOrder(NUM_TRAIN, 1, 6)
  images = {}
  for step, b in enumerate(batches):
    for key, image in zip(order.rows(step, 0, 6)[0], b['image']):
      images[step // 3, int(key)] = image
  changed = [not np.array_equal(images[0, k], images[1, k]) for k in range(NUM_TRAIN)]
  assert sum(changed) >= NUM_TRAIN - 2   # a new brightness factor (dark images may round alike)
  again = _take(source.train_batches(6, 0, 1, seed=1, start_step=4), 2)
  _assert_batches_equal(again, batches[4:])


def test_resume_reads_no_record_before_its_step():
  n, batch, start = 200, 4, 10
  with _mock_data(num_examples=n):
    source = _source({'name': 'imagenet2012'}, SHAPE)
    uninterrupted = _take(source.train_batches(batch, 0, 1, seed=2), start + 2)
    counted = _CountingReads(source.data_sources['train'])
    source.data_sources['train'] = counted
    resumed = _take(source.train_batches(batch, 0, 1, seed=2, start_step=start), 2)
  _assert_batches_equal(resumed, uninterrupted[start:])
  epoch = data_order.epoch_permutation(2, 0, n)
  done, wanted = epoch[:start * batch], epoch[start * batch:(start + 2) * batch]
  assert not set(counted.keys) & set(done.tolist())      # nothing before step `start`
  assert set(wanted.tolist()) <= set(counted.keys)
  assert set(counted.keys) <= set(epoch[start * batch:].tolist())  # read-ahead stays in order
  # One batched read per step, of exactly that step's keys in row order.
  assert len(counted.reads) >= 2
  for i, read in enumerate(counted.reads):
    assert read == epoch[(start + i) * batch:(start + i + 1) * batch].tolist()


@pytest.fixture
def gcs_bucket(monkeypatch):
  """A local fake-gcs-server (tests/gcs_emulator.py) with array_record's GCS client
  (google-cloud-cpp) pointed at it."""
  import gcs_emulator  # pylint: disable=g-import-not-at-top
  emulator = gcs_emulator.Emulator()
  monkeypatch.setenv('CLOUD_STORAGE_EMULATOR_ENDPOINT', emulator.url)
  try:
    yield emulator
  finally:
    emulator.stop()


def test_array_record_reads_the_training_shards_from_gs(tiny_imagenet, gcs_bucket):
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
  _, _, root = tiny_imagenet
  local = sorted(glob.glob(str(root / 'data' / 'imagenet2012' / '*' / '*-train.array_record-*')))
  assert local
  for path in local:
    gcs_bucket.upload(f'tfds/{os.path.basename(path)}', path)
  remote = [f'gs://{gcs_bucket.bucket}/tfds/{os.path.basename(path)}' for path in local]
  keys = data_order.epoch_permutation(0, 0, NUM_TRAIN).tolist()
  expected = array_record_data_source.ArrayRecordDataSource(local).__getitems__(keys)
  read = array_record_data_source.ArrayRecordDataSource(remote).__getitems__(keys)
  assert read == expected and len(set(read)) == NUM_TRAIN


def test_tfrecord_dataset_is_refused_until_prepare_adds_array_record(tiny_imagenet):
  config, labels, root = tiny_imagenet
  old = dict(config, data_dir=str(root / 'tfrecord'))
  with pytest.raises(UserError, match='TFRecord only.*launch/prepare_data.py'):
    _source(old, SHAPE)
  builder = tfds_records.prepare('imagenet2012', old['data_dir'])
  assert tfds_prepare.file_formats(builder) == {'tfrecord', 'array_record'}
  source = _source(dict(old, **NO_JITTER), SHAPE)
  _check_eval_pass(source, labels, 2)
  train = np.concatenate([b['image'] for b in _take(source.train_batches(6, 0, 1, 0), 3)])
  assert sorted(_ids(train, 1)) == [_train_value(k) for k in range(NUM_TRAIN)]


def test_small_copy_shrinks_the_jpegs_and_keeps_the_examples(tiny_imagenet):
  config, labels, root = tiny_imagenet
  builder = tfds_prepare.open_builder('imagenet2012', config['data_dir'])
  tfds_prepare.write_small_copy(builder, str(root / 'small'), short_side=24)
  small = dict(config, data_dir=str(root / 'small'))
  source = _source(small, SHAPE)
  for split in ('train', 'validation'):
    for key in range(len(source.data_sources[split])):
      example = tf.io.parse_single_example(source.data_sources[split][key],
                                           {'image': tf.io.FixedLenFeature([], tf.string)})
      assert min(tf.io.extract_jpeg_shape(example['image'])[:2].numpy()) == 24
  _check_eval_pass(source, labels, 1)


def test_missing_imagenet_explains_the_manual_download(tmp_path):
  config = {'name': 'imagenet2012', 'data_dir': str(tmp_path / 'data'),
            'manual_dir': str(tmp_path / 'manual')}
  with pytest.raises(UserError) as error:
    _source(config, (224, 224, 3))
  message = str(error.value)
  for needle in ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar', str(tmp_path / 'manual'),
                 'download_and_prepare', 'tfds build imagenet2012', 'launch/prepare_data.py'):
    assert needle in message
  with pytest.raises(UserError, match='ILSVRC2012_img_val.tar'):
    tfds_records.prepare('imagenet2012', str(tmp_path / 'data'), str(tmp_path / 'manual'))


def test_missing_cifar_without_download_says_how_to_prepare(tmp_path):
  with pytest.raises(UserError, match='prepare_data.py --dataset=cifar10'):
    _source(
        {'name': 'cifar10', 'data_dir': str(tmp_path), 'download': False}, SHAPE)


def test_wrong_model_input_shape_or_fields_are_value_errors():
  with pytest.raises(ValueError, match=r'model.input_shape=\(224, 224, 3\).*\(32, 32, 3\)'):
    _source({'name': 'cifar10'}, (224, 224, 3))
  with pytest.raises(ValueError, match='model.input_shape'):
    _source({'name': 'imagenet2012'}, (224, 224, 1))
  with pytest.raises(ValueError, match='dataset.normalization'):
    tfds_options.parse_options({'name': 'cifar10', 'normalization': 'zca'})
  with pytest.raises(ValueError, match='dataset.name'):
    tfds_options.parse_options({'name': 'mnist'})
  with pytest.raises(ValueError, match=r"no field\(s\) \['shufle_buffer'\]"):
    tfds_options.parse_options({'name': 'cifar10', 'shufle_buffer': 10})
  for field, value in (('crop_sampler', 'random'), ('jitter_hue', 0.7),
                       ('jitter_brightness', -0.1), ('crop_area_range', (0.5, 0.1)),
                       ('cpu_threads', -1), ('eval_crop_fraction', 1.5)):
    with pytest.raises(ValueError, match=rf'dataset\.{field}=.*(e\.g\.|use )'):
      tfds_options.parse_options({'name': 'imagenet', field: value})
  opts = tfds_options.parse_options({'name': 'imagenet'})   # only `name` set; an alias
  assert (opts.name, opts.normalization, opts.eval_split, opts.crop_sampler, opts.jitter) == (
      'imagenet2012', 'unit', 'validation', 'inception', tfds_options.PAPER_JITTER)
  zero = tfds_options.parse_options({'name': 'imagenet', 'jitter_brightness': 0.0})
  assert zero.jitter[0] == 0.0                               # 0 is a value, not "unset"


# ---------------------------------------------------------------------------------------------
# tfds.testing.mock_data: random images of each dataset's own format.

@pytest.mark.parametrize('name,shape,normalization', [
    ('cifar10', SHAPE, None), ('cifar100', SHAPE, 'unit'),
    ('imagenet2012', (48, 40, 3), None), ('imagenet2012', SHAPE, 'mean_std')])
def test_mock_batches_have_shapes_dtypes_and_pixel_stats(name, shape, normalization):
  with _mock_data(num_examples=10):
    source = _source({'name': name, 'normalization': normalization}, shape)
    train = _take(source.train_batches(4, 0, 1, seed=0), 3)
    evals = list(source.eval_batches(4, 0, 1))
  assert source.num_classes == {'cifar10': 10, 'cifar100': 100, 'imagenet2012': 1000}[name]
  spec = tfds_options.SPECS[name]
  if source.opts.normalization == 'unit':
    assert (source.pixel_mean, source.pixel_std) == ((0.0,) * 3, (255.0,) * 3)
  else:
    np.testing.assert_allclose(source.pixel_mean, 255 * np.array(spec.mean))
    np.testing.assert_allclose(source.pixel_std, 255 * np.array(spec.std))
  for b in train + evals:
    assert b['image'].shape == (4, *shape) and b['image'].dtype == np.uint8
    assert b['label'].dtype == np.int32
    assert 0 <= b['label'].min() and b['label'].max() < source.num_classes
    assert b['image'].max() - b['image'].min() > 128   # random pixels, not blank
  assert [b['mask'].tolist() for b in evals] == [[1] * 4, [1] * 4, [1, 1, 0, 0]]
  assert [b['index'].tolist() for b in evals] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, -1, -1]]
  # The model input, normalised on the device, is 'unit' [0, 1] or per-channel standardised.
  model_input = (evals[0]['image'] - np.float32(source.pixel_mean)) / np.float32(source.pixel_std)
  unit = evals[0]['image'] / np.float32(255)
  expected = (unit if source.opts.normalization == 'unit'
              else (unit - np.float32(spec.mean)) / np.float32(spec.std))
  np.testing.assert_allclose(model_input, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', ['cifar10', 'imagenet2012'])
def test_mock_resume_gives_the_uninterrupted_batches(name):
  jitter = {'jitter_brightness': 0.4} if name == 'cifar10' else {}
  with _mock_data(num_examples=10):
    source = _source(dict(name=name, **jitter), SHAPE)
    uninterrupted = _take(source.train_batches(4, 0, 1, seed=3), 5)   # 2.5 steps an epoch
    resumed = _take(source.train_batches(4, 0, 1, seed=3, start_step=3), 2)
    other_seed = next(source.train_batches(4, 0, 1, seed=4))
  _assert_batches_equal(resumed, uninterrupted[3:])
  assert not np.array_equal(other_seed['image'], uninterrupted[0]['image'])
  assert not np.array_equal(uninterrupted[0]['image'], uninterrupted[2]['image'])


def test_mock_eval_splits_cover_the_split_once():
  with _mock_data(num_examples=11):
    source = _source({'name': 'cifar10'}, SHAPE)
    counted = _CountingReads(source.data_sources['test'])
    source.data_sources['test'] = counted
    whole = np.concatenate([b['image'][b['mask'] == 1] for b in source.eval_batches(3, 0, 1)])
    assert counted.reads == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10]]   # one read a batch
    assert len(whole) == 11 and len({x.tobytes() for x in whole}) == 11
    for count in (2, 3):
      parts = [list(source.eval_batches(3, index, count)) for index in range(count)]
      assert len({len(p) for p in parts}) == 1
      joined = np.concatenate([b['image'][b['mask'] == 1] for p in parts for b in p])
      np.testing.assert_array_equal(joined, whole)
      indices = np.concatenate([b['index'][b['mask'] == 1] for p in parts for b in p])
      assert indices.tolist() == list(range(11))


# ---------------------------------------------------------------------------------------------
# The augmentation ops (tfds_augment), eagerly on small images.

def _seeds(count):
  return [tf.constant([7, s], tf.int64) for s in range(count)]


def _jittered(image, strengths, count=200):
  """uint8 results of the compiled flip + jitter stage over `count` seeds."""
  x = tf.constant(image, tf.float32)
  return np.stack([tfds_augment.flip_jitter_round(x, s, strengths).numpy()
                   for s in _seeds(count)]).astype(np.float64)


def test_brightness_factor_stays_within_its_strength():
  out = _jittered(np.full((8, 8, 3), 100.0), (0.5, 0, 0, 0))
  means = out.mean(axis=(1, 2, 3))
  assert means.min() >= 50 - 0.5 and means.max() <= 150 + 0.5   # factors in [0.5, 1.5]
  assert means.min() < 55 and means.max() > 145                  # and they fill the range
  assert np.all(out.std(axis=(1, 2, 3)) < 0.6)                   # grey stays grey


def test_contrast_saturation_hue_change_pixels_within_their_strengths():
  rng = np.random.default_rng(0)
  image = rng.uniform(60, 190, (8, 8, 3))        # no clipping at factors in [0.5, 1.5]
  gray = image @ np.array(tfds_augment.GRAY_WEIGHTS)
  # contrast: deviations from the mean grey scale by one factor in [0.5, 1.5]
  out = _jittered(image, (0, 0.5, 0, 0), 60)
  ratios = np.array([np.abs(o - gray.mean()).sum() for o in out]) / np.abs(image - gray.mean()).sum()
  assert 0.5 - 0.02 <= ratios.min() and ratios.max() <= 1.5 + 0.02 and np.ptp(ratios) > 0.6
  # saturation: deviations from each pixel's grey scale by one factor in [0.5, 1.5]
  out = _jittered(image, (0, 0, 0.5, 0), 60)
  ratios = np.array([np.abs(o - (o @ np.array(tfds_augment.GRAY_WEIGHTS))[..., None]).sum()
                     for o in out]) / np.abs(image - gray[..., None]).sum()
  assert 0.5 - 0.03 <= ratios.min() and ratios.max() <= 1.5 + 0.03 and np.ptp(ratios) > 0.6
  # hue: every pixel keeps its largest and smallest channel values; the middle one moves
  out = _jittered(image, (0, 0, 0, 0.2), 60)
  moved = []
  for o in out:
    if np.abs(o.max(-1) - image.max(-1)).max() > 1.01:
      o = o[:, ::-1]                                            # the stage also flips
    np.testing.assert_allclose(o.max(-1), image.max(-1), atol=1.01)
    np.testing.assert_allclose(o.min(-1), image.min(-1), atol=1.01)
    moved.append(np.abs(np.median(o, -1) - np.median(image, -1)).max() > 5)
  assert np.mean(moved) > 0.5


def test_jitter_ops_match_torchvision_formulas():
  """apply_jitter (compiled or not) against numpy versions of torchvision's tensor ops."""
  rng = np.random.default_rng(1)
  image = rng.uniform(0, 255, (6, 5, 3)).astype(np.float32)
  w = np.array(tfds_augment.GRAY_WEIGHTS, np.float32)

  def hue(x, shift):
    out = np.empty_like(x)
    for i, j in np.ndindex(x.shape[:2]):
      h, s, v = colorsys.rgb_to_hsv(*(x[i, j] / 255))
      out[i, j] = np.array(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)) * 255
    return out

  numpy_ops = {
      'brightness': lambda x, f: np.clip(x * f, 0, 255),
      'contrast': lambda x, f: np.clip(f * x + (1 - f) * (x @ w).mean(), 0, 255),
      'saturation': lambda x, f: np.clip(f * x + (1 - f) * (x @ w)[..., None], 0, 255),
      'hue': lambda x, f: np.clip(hue(x, f), 0, 255)}
  ops = tfds_augment.JITTER_OPS
  factors = np.float32([1.6, 0.4, 1.3, -0.15])
  compiled = tf.function(tfds_augment.apply_jitter, jit_compile=True)
  for order in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
    expected = image
    for i in order:
      expected = numpy_ops[ops[i]](expected, factors[i])
    for fn in (tfds_augment.apply_jitter, compiled):
      got = fn(tf.constant(image), tf.constant(order), tf.constant(factors), ops)
      np.testing.assert_allclose(got.numpy(), expected, atol=0.05)


def test_jitter_order_is_random_and_factors_in_range():
  strengths = (0.87, 0.5, 0.5, 0.2)
  orders, factors = set(), []
  for seed in _seeds(300):
    order, f = tfds_augment.jitter_params(seed, strengths)
    orders.add(tuple(order.numpy()))
    factors.append(f.numpy())
  assert len(orders) == 24                       # every order of the four ops occurs
  factors = np.array(factors)
  for i, op in enumerate(tfds_augment.JITTER_OPS):
    lo, hi = tfds_augment.jitter_factor_range(op, strengths[i])
    assert lo <= factors[:, i].min() < lo + 0.1 and hi - 0.1 < factors[:, i].max() <= hi
  assert tfds_augment.jitter_factor_range('brightness', 0.87) == pytest.approx((0.13, 1.87))
  assert tfds_augment.jitter_factor_range('contrast', 1.5) == (0.0, 2.5)


@pytest.mark.parametrize('sampler,area,aspect', [
    ('torchvision', (0.08, 1.0), (3 / 4, 4 / 3)), ('inception', (0.05, 1.0), (3 / 4, 4 / 3)),
    ('torchvision', (0.9, 1.0), (3.0, 4.0))])   # last: nothing fits, the clamped centre crop
def test_crop_windows_stay_inside_with_the_configured_area_and_aspect(sampler, area, aspect):
  hw = tf.constant([300, 400], tf.int32)
  windows = np.array([[int(v) for v in tfds_augment.CROP_SAMPLERS[sampler](hw, s, area, aspect)]
                      for s in _seeds(100)])
  top, left, height, width = windows.T
  assert np.all(top >= 0) and np.all(left >= 0) and np.all(height > 0) and np.all(width > 0)
  assert np.all(top + height <= 300) and np.all(left + width <= 400)
  if aspect[0] > 2:
    assert np.all(windows == [(300 - 133) // 2, 0, 133, 400])
    return
  fraction = height * width / (300 * 400)
  assert fraction.min() >= area[0] * 0.95 and fraction.max() <= area[1]
  assert np.all(width / height >= aspect[0] * 0.95) and np.all(width / height <= aspect[1] * 1.05)
  assert len({tuple(w) for w in windows}) > 90


def test_eval_window_is_the_resize_then_centre_crop_region():
  # A 300 x 400 image resized to a 256 shorter side is 256 x 341; its centre 224 x 224 is
  # 262.5 x 262.5 original pixels, centred.
  window = [int(v) for v in tfds_augment.eval_window(tf.constant([300, 400]), (224, 224), 0.875)]
  assert window == [19, 69, 262, 262]


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
