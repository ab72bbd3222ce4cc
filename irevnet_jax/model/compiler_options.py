"""The XLA options this package's programs compile with: `for_platform(platform)`.

XLA's CPU pipeline drops every `lax.optimization_barrier` early (its
`cse_barrier_expander` pass), before fusion. The engine puts one after every
autodiff / remat coupling (`reversible._materialized`) and around every
reversible backward coupling; without them XLA's CPU fusion copies each block's
elementwise cotangent chain (the BN backward terms of every later block) into
every consumer, a recomputation that grows with depth squared. Measured on 2
cores, CIFAR-10 model, batch 64, float32 (benchmarks/RESULTS.md):

    mode        default options   with for_platform('cpu')
    autodiff    6.48-6.68 s/step  2.30-2.78 s/step
    remat       6.60-6.81 s/step  2.71 s/step, temp memory 1.07 -> 0.25 GiB

The results are the same (a barrier is an identity). GPU and TPU keep barriers
by default and need no option. In your own code:

    jax.jit(train_step, compiler_options=irevnet_jax.compiler_options())
"""
from typing import Optional

import jax

KEEP_BARRIERS = {'xla_disable_hlo_passes': 'cse_barrier_expander'}


def for_platform(platform: Optional[str] = None) -> dict:
  """`compiler_options` for jax.jit / `Lowered.compile` on `platform` ('cpu', 'gpu', 'tpu';
  default: JAX's default backend)."""
  platform = platform or jax.default_backend()
  return dict(KEEP_BARRIERS) if platform == 'cpu' else {}
