"""PNG figures of the analysis (matplotlib, Agg backend; no display needed).

Every figure has a fixed size in inches at `DPI`, so its pixel size is known in
advance: `grid_size_px(rows, cols)` for image grids, `LINE_PLOT_PX` for the
curves. Image grids share one intensity scale per figure, so a reconstruction
that is off shows: with a `PixelSpace` the images are shown as the pixels they
came from (the model's input de-normalised); without one, the range of the
reference row (usually the inputs) is mapped to black .. white.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from irevnet_jax.run import paths  # noqa: E402

DPI = 100
TILE_IN = 0.8          # inches per image tile
LABEL_IN = 1.6         # left margin for row labels
TITLE_IN = 0.45        # top margin for the title
PAD_IN = 0.1           # right and bottom margins
LINE_PLOT_IN = (10.0, 4.0)
LINE_PLOT_PX = (int(round(LINE_PLOT_IN[1] * DPI)), int(round(LINE_PLOT_IN[0] * DPI)))


def grid_size_px(rows: int, cols: int):
  """(height, width) in pixels of an image grid of rows x cols tiles."""
  w = LABEL_IN + cols * TILE_IN + PAD_IN
  h = TITLE_IN + rows * TILE_IN + PAD_IN
  return int(round(h * DPI)), int(round(w * DPI))


class PixelSpace(NamedTuple):
  """The way back from the model's input x to displayable pixels, per channel:
  pixel = x * std + mean (in the data source's pixel units, e.g. 0..255), shown as
  pixel / max_value clipped to [0, 1]. With a source's `pixel_mean` / `pixel_std`, images
  normalised with ImageNet's mean and std are shown in the colours they had."""
  mean: Tuple[float, ...]
  std: Tuple[float, ...]
  max_value: float = 255.0

  def __call__(self, x) -> np.ndarray:
    """Model inputs (..., H, W, C) -> float64 (..., H, W, C) in [0, 1]."""
    x = np.asarray(x, np.float64)
    pixels = x * np.asarray(self.std, np.float64) + np.asarray(self.mean, np.float64)
    return np.clip(pixels / self.max_value, 0.0, 1.0)


def _displayable(images, lo, hi):
  """(N, H, W, C) -> (N, H, W) grey or (N, H, W, 3) RGB in [0, 1]."""
  images = np.asarray(images, np.float64)
  images = np.clip((images - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
  if images.shape[-1] == 3:
    return images
  return images[..., 0]


def image_grid(rows: Sequence[np.ndarray], labels: Sequence[str], path: str, title: str,
               value_range: Optional[Sequence[float]] = None,
               raw_rows: Sequence[int] = ()) -> str:
  """Saves rows of images (each (cols, H, W, C)) as one labelled grid PNG.

  value_range: (lo, hi) mapped to black / white; default the range of rows[0].
  raw_rows: indices of rows already in [0, 1] (e.g. amplified error maps).
  """
  cols = max(len(r) for r in rows)
  lo, hi = value_range if value_range is not None else (float(np.min(rows[0])),
                                                          float(np.max(rows[0])))
  h_px, w_px = grid_size_px(len(rows), cols)
  fig = plt.figure(figsize=(w_px / DPI, h_px / DPI), dpi=DPI)
  fig.suptitle(title, fontsize=9, y=1 - 0.1 / (h_px / DPI))
  width, height = w_px / DPI, h_px / DPI
  for i, (row, label) in enumerate(zip(rows, labels)):
    shown = _displayable(row, 0.0, 1.0) if i in raw_rows else _displayable(row, lo, hi)
    for j, image in enumerate(shown):
      left = (LABEL_IN + j * TILE_IN) / width
      bottom = 1 - (TITLE_IN + (i + 1) * TILE_IN) / height
      ax = fig.add_axes([left, bottom, 0.95 * TILE_IN / width, 0.95 * TILE_IN / height])
      ax.imshow(image, cmap='gray' if image.ndim == 2 else None, vmin=0, vmax=1,
                interpolation='nearest')
      ax.set_xticks([])
      ax.set_yticks([])
      if j == 0:
        ax.set_ylabel(label, rotation=0, ha='right', va='center', fontsize=8)
  return _save(fig, path)


def reconstruction_grid(x, x_hat, path: str, rel_error: float,
                        pixel_space: Optional[PixelSpace] = None) -> str:
  """Inputs above reconstructions above |x_hat - x| amplified to fill the range.

  x, x_hat: model inputs (N, H, W, C). With `pixel_space` the first two rows are shown as
  pixels; the error row is |x_hat - x| on the model's input either way.
  """
  x, x_hat = np.asarray(x, np.float64), np.asarray(x_hat, np.float64)
  err = np.abs(x_hat - x)
  lo, hi = float(x.min()), float(x.max())
  gain = (hi - lo) / err.max() if err.max() > 0 else 1.0
  err_row = np.clip(err * gain / max(hi - lo, 1e-30), 0, 1)
  shown, value_range = [x, x_hat], (lo, hi)
  if pixel_space is not None:
    shown, value_range = [pixel_space(x), pixel_space(x_hat)], (0.0, 1.0)
  return image_grid(
      shown + [err_row], ['input x', 'invert(forward(x))', f'|error| x {gain:.1e}'],
      path, f'Reconstruction: relative L2 error {rel_error:.2e}', value_range, raw_rows=(2,))


def interpolation_grid(pixel_paths, latent_paths, path: str, predictions=None,
                       pixel_space: Optional[PixelSpace] = None) -> str:
  """Two rows per pair: the pixel cross-fade above the inverted representation path.

  Paths: model inputs (P, steps, H, W, C), shown as pixels with `pixel_space`.
  """
  rows, labels = [], []
  for p, (pix, lat) in enumerate(zip(pixel_paths, latent_paths)):
    rows += [pix, lat]
    labels += [f'pair {p + 1}: pixels', f'pair {p + 1}: invert(z)']
    if predictions is not None:
      labels[-1] += '\n' + ' '.join(str(int(c)) for c in predictions[p])
  title = 'Linear paths: pixel space vs representation z'
  if pixel_space is not None:
    return image_grid([pixel_space(r) for r in rows], labels, path, title, (0.0, 1.0))
  ref = np.stack([r[0] for r in pixel_paths] + [r[-1] for r in pixel_paths])
  return image_grid(rows, labels, path, title, (float(ref.min()), float(ref.max())))


def metamer_grid(x_a, x_b, x_star, path: str, labels_a, labels_b, predicted_star,
                 pixel_space: Optional[PixelSpace] = None) -> str:
  """Rows a, b and the metamer x* = invert(z*) (a's logits, representation nearest b's).

  Images: model inputs (P, H, W, C); the row labels list the classes per column.
  """
  classes = lambda c: ' '.join(str(int(k)) for k in c)
  labels = [f'a (label)\n{classes(labels_a)}', f'b (label)\n{classes(labels_b)}',
            f'x* (predicted)\n{classes(predicted_star)}']
  rows = [x_a, x_b, x_star]
  title = "Metamers: x* has a's logits, z* nearest b's"
  if pixel_space is not None:
    return image_grid([pixel_space(r) for r in rows], labels, path, title, (0.0, 1.0))
  ref = np.concatenate([x_a, x_b])
  return image_grid(rows, labels, path, title, (float(ref.min()), float(ref.max())))


def depth_plot(names: List[str], blocks: List[int], linear: List[float], nn1: List[float],
               contraction: List[float], path: str, head_accuracy: Optional[float] = None) -> str:
  """Accuracy of the linear and 1-NN probes (left) and contraction (right) against depth."""
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=LINE_PLOT_IN, dpi=DPI)
  ax1.plot(blocks, linear, 'o-', label='linear probe')
  ax1.plot(blocks, nn1, 's--', label='1-nearest neighbour')
  if head_accuracy is not None:
    ax1.axhline(head_accuracy, color='grey', lw=1, ls=':', label='trained head')
  ax1.set_ylabel('eval accuracy')
  ax1.legend(fontsize=8, loc='lower right')
  ax2.plot(blocks, contraction, 'o-', color='tab:red')
  ax2.set_ylabel('mean intra / inter-class distance')
  for ax, title in ((ax1, 'Separation with depth'), (ax2, 'Contraction with depth')):
    ax.set_xticks(blocks)
    crowded = len(names) > 5
    ax.set_xticklabels([f'{n} ({b})' if crowded else f'{n}\n({b})'
                        for n, b in zip(names, blocks)], fontsize=7,
                       rotation=40 if crowded else 0, ha='right' if crowded else 'center')
    ax.set_xlabel('depth (blocks applied)')
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  return _save(fig, path)


def pca_plot(curve: dict, path: str, depth_name: str) -> str:
  """Probe accuracy on the top-d principal components and cumulative explained variance."""
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=LINE_PLOT_IN, dpi=DPI)
  dims, acc = curve['dims'], curve['accuracy']
  d_star, full = curve['d_at_fraction'], curve['full_accuracy']
  ax1.plot(dims, acc, 'o-', ms=3)
  ax1.axhline(curve['fraction'] * full, color='grey', ls=':', lw=1,
              label=f'{100 * curve["fraction"]:.0f}% of full-rank accuracy {full:.3f}')
  ax1.axvline(d_star, color='tab:green', ls='--', lw=1, label=f'd = {d_star}')
  ax1.set_ylabel('linear probe eval accuracy')
  ax1.set_title(f'Top-d principal components of {depth_name}', fontsize=10)
  ratio = np.asarray(curve['explained_variance_ratio'])
  d_all = np.arange(1, len(ratio) + 1)
  ax2.plot(d_all, np.cumsum(ratio), '-')
  ax2.axvline(d_star, color='tab:green', ls='--', lw=1)
  ax2.set_ylabel('cumulative explained variance')
  ax2.set_title('Explained variance', fontsize=10)
  for ax in (ax1, ax2):
    ax.set_xscale('log', base=2)
    ax.set_xlabel('d (principal components)')
    ax.grid(alpha=0.3)
  ax1.legend(fontsize=8, loc='lower right')
  fig.tight_layout()
  return _save(fig, path)


def read_png_size(path: str):
  """(height, width) of a PNG, read back with matplotlib."""
  image = plt.imread(path)
  return image.shape[:2]


def _save(fig, path: str) -> str:
  """Writes `fig` as a PNG to `path`, whole or not at all (`paths.write_local`), and closes it."""
  try:
    paths.write_local(path, lambda f: fig.savefig(f, format='png', dpi=DPI))
  finally:
    plt.close(fig)
  return path
