"""Bridges to checkpoints of other implementations; none of them imports PyTorch.

- `authors`: the authors' PyTorch i-RevNet (jhjacobsen/pytorch-i-revnet): their
  state dicts and checkpoint files <-> irevnet_jax variables.
"""
from irevnet_jax.interop import authors

__all__ = ['authors']
