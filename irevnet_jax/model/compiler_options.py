"""The XLA options this package's programs compile with: `for_platform(platform)`.

XLA's CPU pipeline drops every `lax.optimization_barrier` early (its
`cse_barrier_expander` pass), before fusion. The engine puts one after every
autodiff / remat coupling (`reversible._materialized`) and around every
reversible backward coupling; without them XLA's CPU fusion copies each block's
elementwise cotangent chain (the BN backward terms of every later block) into
every consumer, a recomputation that grows with depth squared, and remat keeps
autodiff's memory.

Guaranteed: the options change no result (a barrier is an identity), only how XLA may
fuse; with them the CPU program holds every barrier the engine places. GPU and TPU keep
barriers by default and get no option. Step times with and without them:
benchmarks/RESULTS.md ("CPU train step per mode, barriers kept"). In your own code:

    jax.jit(train_step, compiler_options=irevnet_jax.compiler_options())
"""
from typing import Optional

import jax

KEEP_BARRIERS = {'xla_disable_hlo_passes': 'cse_barrier_expander'}
# For programs compiled to be run once or only analysed: the same arithmetic and the same
# buffer plan (XLA plans buffers before code generation), without LLVM's optimisation,
# several times sooner to compile on CPU.
NO_BACKEND_OPTIMIZATION = {'xla_backend_optimization_level': 0}


def for_platform(platform: Optional[str] = None) -> dict:
  """`compiler_options` for jax.jit / `Lowered.compile` on `platform` ('cpu', 'gpu', 'tpu';
  default: JAX's default backend)."""
  platform = platform or jax.default_backend()
  return dict(KEEP_BARRIERS) if platform == 'cpu' else {}
