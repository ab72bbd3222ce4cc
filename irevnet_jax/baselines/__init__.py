"""The paper's baselines in the i-RevNet framework: ResNet-50 v1.5 and RevNet-56 / 104.

    net = irevnet_jax.build(irevnet_jax.baselines.revnet56())
    variables = net.init(jax.random.PRNGKey(0), x)
    logits, features = net.forward(variables, x)

They are `irevnet_jax.Net`s like i-RevNet (`irevnet_jax.build` wraps `module`):
`net.invertible` is False and `net.invert` raises.
"""
from typing import Optional

from irevnet_jax.baselines import resnet, revnet
from irevnet_jax.baselines.presets import PRESETS, layout, resnet50, revnet56, revnet104

__all__ = ['module', 'layout', 'resnet50', 'revnet56', 'revnet104', 'PRESETS']


def module(model_config, bn_axis_name: Optional[str] = None):
  """The Flax module (`resnet.ResNet` or `revnet.RevNet`) of a validated baseline config."""
  arch = layout(model_config)
  module_cls = resnet.ResNet if arch.kind == 'resnet' else revnet.RevNet
  return module_cls(arch, bn_axis_name)

