"""Tests of the data sources: fixed digits split, resumable order, process sharding, eval masks."""
import ml_collections
import numpy as np
import pytest

from irevnet_jax.data import input_pipeline


@pytest.fixture(scope='module')
def digits():
  return input_pipeline.digits_source()


def _dataset(**fields):
  return ml_collections.ConfigDict(fields)


def test_digits_split_is_fixed_and_real(digits):
  assert (digits.num_train_examples, digits.num_eval_examples) == (1438, 359)
  assert digits.input_shape == (8, 8, 1) and digits.num_classes == 10
  train_images, train_labels = digits._train
  eval_images, eval_labels = digits._eval
  assert train_images.dtype == np.uint8 and train_images.min() == 0 and train_images.max() == 16
  assert digits.pixel_mean == (0.0,) and digits.pixel_std == (16.0,)   # the model sees [0, 1]
  assert np.bincount(eval_labels).min() >= 35    # stratified: every class held out
  # The split is a partition of the 1,797 scikit-learn images (no overlap).
  rows = {r.tobytes() for r in train_images.reshape(len(train_images), -1)}
  overlap = sum(r.tobytes() in rows for r in eval_images.reshape(len(eval_images), -1))
  assert overlap <= 2   # the bundled set contains a couple of duplicate images
  again = input_pipeline.digits_source()
  np.testing.assert_array_equal(again._eval[1], eval_labels)


def test_train_batches_resume_at_any_step(digits):
  from_zero = digits.train_batches(64, 0, 1, seed=3, start_step=0)
  batches = [next(from_zero) for _ in range(50)]   # > 2 epochs of 1,438 images
  resumed = digits.train_batches(64, 0, 1, seed=3, start_step=37)
  for step in range(37, 50):
    batch = next(resumed)
    np.testing.assert_array_equal(batch['image'], batches[step]['image'])
    np.testing.assert_array_equal(batch['label'], batches[step]['label'])
  assert batches[0]['image'].dtype == np.uint8 and batches[0]['label'].dtype == np.int32
  # An epoch visits every training image once.
  epoch = np.concatenate([b['label'] for b in batches])[:1438]
  np.testing.assert_array_equal(np.bincount(epoch), np.bincount(digits._train[1]))
  other_seed = next(digits.train_batches(64, 0, 1, seed=4, start_step=0))
  assert not np.array_equal(other_seed['label'], batches[0]['label'])


def test_processes_split_each_global_batch(digits):
  whole = digits.train_batches(48, 0, 1, seed=0, start_step=5)
  parts = [digits.train_batches(16, p, 3, seed=0, start_step=5) for p in range(3)]
  for _ in range(3):
    expected = next(whole)
    got = [next(p) for p in parts]
    np.testing.assert_array_equal(np.concatenate([g['image'] for g in got]), expected['image'])


@pytest.mark.parametrize('local_batch, process_count', [(64, 1), (50, 3), (359, 1), (7, 2)])
def test_eval_counts_every_example_once(digits, local_batch, process_count):
  per_process = [list(digits.eval_batches(local_batch, p, process_count))
                 for p in range(process_count)]
  assert len({len(b) for b in per_process}) == 1
  labels, images = [], []
  for batches in per_process:
    for batch in batches:
      assert batch['image'].shape == (local_batch, 8, 8, 1)
      keep = batch['mask'] == 1
      assert set(np.unique(batch['mask'])) <= {0.0, 1.0}
      labels.append(batch['label'][keep])
      images.append(batch['image'][keep])
  np.testing.assert_array_equal(np.sort(np.concatenate(labels)), np.sort(digits._eval[1]))
  assert np.isclose(np.concatenate(images).sum(), digits._eval[0].sum())


def test_synthetic_source():
  source = input_pipeline.get_source(_dataset(name='synthetic', num_eval_examples=100),
                                     (16, 16, 3))
  assert source.input_shape == (16, 16, 3)
  first = next(source.train_batches(8, 0, 1, seed=0, start_step=0))
  again = next(source.train_batches(8, 0, 1, seed=0, start_step=0))
  assert first['image'].shape == (8, 16, 16, 3) and first['label'].shape == (8,)
  np.testing.assert_array_equal(first['image'], again['image'])
  masks = [b['mask'] for p in range(2) for b in source.eval_batches(16, p, 2)]
  assert sum(m.sum() for m in masks) == 100


@pytest.mark.parametrize('fields, shape, message', [
    ({'name': 'mnistx'}, (8, 8, 1), "Unknown dataset.name='mnistx'"),
    ({'name': 'digits'}, (32, 32, 3), r'set model.input_shape=\(8, 8, 1\)'),
    ({'name': 'digits', 'augment': True}, (8, 8, 1), r"has no field\(s\) \['augment'\]"),
    ({'name': 'synthetic', 'num_eval': 5}, (8, 8, 1), 'num_eval'),
])
def test_source_errors(fields, shape, message):
  with pytest.raises(ValueError, match=message):
    input_pipeline.get_source(_dataset(**fields), shape)


def test_a_source_with_more_classes_than_the_model_is_refused():
  """The one check training, evaluation and analysis make (`program.source_for`)."""
  dataset = _dataset(name='synthetic', num_classes=20)
  assert input_pipeline.get_source(dataset, (8, 8, 1), 20).num_classes == 20
  with pytest.raises(ValueError, match='has 20 classes, the model 10; set model.num_classes=20 '
                     'or dataset.num_classes=10'):
    input_pipeline.get_source(dataset, (8, 8, 1), 10)
  with pytest.raises(ValueError, match=r'imagenet2012.*model.num_classes=10 \(it has 1000'):
    input_pipeline.get_source(_dataset(name='imagenet2012'), (224, 224, 3), 10)
