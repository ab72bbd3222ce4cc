"""psi, padding and split/merge: channel orders from the reference notes, bit-exact inverses."""
import numpy as np
import pytest

from irevnet_jax.model import ops


@pytest.mark.parametrize('b', [2, 4])
def test_psi_channel_order_matches_formula(b):
  rng = np.random.default_rng(0)
  n, h, w, c = 2, 4 * b, 2 * b, 3
  x = rng.normal(size=(n, h, w, c)).astype(np.float32)
  y = np.asarray(ops.psi(x, b))
  assert y.shape == (n, h // b, w // b, b * b * c)
  expected = np.empty_like(y)
  for i in range(h // b):
    for j in range(w // b):
      for dy in range(b):
        for dx in range(b):
          for ch in range(c):
            expected[:, i, j, (dy * b + dx) * c + ch] = x[:, i * b + dy, j * b + dx, ch]
  np.testing.assert_array_equal(y, expected)


def test_psi_matches_tensorflow_space_to_depth():
  tf = pytest.importorskip('tensorflow')
  x = np.random.default_rng(1).normal(size=(2, 8, 6, 5)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(ops.psi(x, 2)), tf.nn.space_to_depth(x, 2).numpy())


@pytest.mark.parametrize('b', [1, 2, 4])
def test_psi_inverse_is_bit_exact(b):
  x = np.random.default_rng(2).normal(size=(3, 8, 8, 6)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(ops.psi_inverse(ops.psi(x, b), b)), x)
  y = np.random.default_rng(3).normal(size=(3, 2, 2, 6 * b * b)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(ops.psi(ops.psi_inverse(y, b), b)), y)


def test_padding_appends_zeros_at_the_end_and_unpad_drops_them():
  x = np.random.default_rng(4).normal(size=(2, 3, 3, 5)).astype(np.float32)
  padded = np.asarray(ops.pad_channels(x, 7))
  assert padded.shape == (2, 3, 3, 12)
  np.testing.assert_array_equal(padded[..., :5], x)
  np.testing.assert_array_equal(padded[..., 5:], 0.0)
  np.testing.assert_array_equal(np.asarray(ops.unpad_channels(padded, 7)), x)
  np.testing.assert_array_equal(np.asarray(ops.pad_channels(x, 0)), x)


@pytest.mark.parametrize('c', [1, 3, 4, 7])
def test_split_takes_floor_half_first_and_merge_inverts(c):
  x = np.random.default_rng(5).normal(size=(2, 2, 2, c)).astype(np.float32)
  x1, x2 = ops.split(x)
  assert x1.shape[-1] == c // 2 and x2.shape[-1] == c - c // 2
  np.testing.assert_array_equal(np.asarray(x1), x[..., :c // 2])
  np.testing.assert_array_equal(np.asarray(ops.merge(x1, x2)), x)
