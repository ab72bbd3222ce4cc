"""irevnet_jax: i-RevNet (Jacobsen, Smeulders, Oyallon, ICLR 2018) in JAX/Flax.

    net = irevnet_jax.build(irevnet_jax.presets.cifar10())
    variables = net.init(jax.random.PRNGKey(0), x)
    logits, z = net.forward(variables, x)
    x_again = net.invert(variables, z)

Importing this package does not import TensorFlow.
"""
from irevnet_jax.model import presets
from irevnet_jax.model.network import IRevNet
from irevnet_jax.nets import Net, build, count_params

__all__ = ['build', 'count_params', 'presets', 'Net', 'IRevNet']
