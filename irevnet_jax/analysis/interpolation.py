"""Linear paths between two images, in pixel space and in the representation z.

The representation path z_t = (1 - t) z_a + t z_b is mapped back to images with
`net.invert`: what the network "sees" between two inputs. The pixel path
(1 - t) x_a + t x_b is the cross-fade it is compared with.
"""
import jax
import jax.numpy as jnp
import numpy as np

from irevnet_jax.errors import UserError


def pick_pairs(labels, num_pairs: int):
  """Index pairs (i, j) of examples with different labels, each example used once
  where possible, in order of appearance."""
  labels = np.asarray(labels)
  pairs, used = [], set()
  for i in range(len(labels)):
    if len(pairs) == num_pairs:
      break
    if i in used:
      continue
    for j in range(i + 1, len(labels)):
      if j not in used and labels[j] != labels[i]:
        pairs.append((i, j))
        used.update((i, j))
        break
  return pairs


def make_path_fn(net, num_steps: int):
  """A jitted fn(variables, x_a, x_b) -> (pixel_path, latent_path, path_logits).

  x_a, x_b: (P, H, W, C). Paths: (P, num_steps, H, W, C), t = 0 .. 1.
  path_logits (P, num_steps, classes): the head's logits along the z path.
  """
  if not net.invertible:
    raise UserError(f'Interpolation needs an invertible network; {type(net).__name__} '
                    f'has net.invertible == False.')
  if num_steps < 2:
    raise UserError(f'num_steps={num_steps} must be >= 2 (both end points), e.g. 8.')

  def fn(variables, x_a, x_b):
    t = jnp.linspace(0.0, 1.0, num_steps)
    p, shape = x_a.shape[0], x_a.shape[1:]
    mix = lambda a, b: ((1 - t)[None, :, None, None, None] * a[:, None]
                        + t[None, :, None, None, None] * b[:, None])
    pixels = mix(x_a, x_b)
    _, z = net.forward(variables, jnp.concatenate([x_a, x_b]))
    z_a, z_b = z[:p], z[p:]
    z_path = mix(z_a, z_b).reshape(p * num_steps, *z_a.shape[1:])
    images = net.invert(variables, z_path)
    # The head on the z path: its BN + pool + dense act on z, which the module
    # exposes only through __call__, so classify the rebuilt images.
    logits, _ = net.forward(variables, images)
    return (pixels, images.reshape(p, num_steps, *shape),
            logits.reshape(p, num_steps, -1))
  return jax.jit(fn)


def interpolate(net, variables, x_a, x_b, num_steps: int = 8):
  """Host arrays (pixel_path, latent_path, predicted classes (P, num_steps))."""
  pixels, images, logits = jax.device_get(
      make_path_fn(net, num_steps)(variables, jnp.asarray(x_a), jnp.asarray(x_b)))
  return np.asarray(pixels), np.asarray(images), np.asarray(logits).argmax(-1)
