"""The paper's baselines in the i-RevNet framework: ResNet-50 v1.5 and RevNet-56 / 104.

    net = irevnet_jax.build(irevnet_jax.baselines.revnet56())   # or baselines.build(...)
    variables = net.init(jax.random.PRNGKey(0), x)
    logits, features = net.forward(variables, x)

`net.invertible` is False and `net.invert` raises.
"""
from irevnet_jax.baselines.net import BaselineNet, build
from irevnet_jax.baselines.presets import PRESETS, layout, resnet50, revnet56, revnet104

__all__ = ['build', 'BaselineNet', 'layout', 'resnet50', 'revnet56', 'revnet104', 'PRESETS']
