"""irevnet_jax: i-RevNet (Jacobsen, Smeulders, Oyallon, ICLR 2018) in JAX/Flax.

    net = irevnet_jax.build(irevnet_jax.presets.cifar10())
    variables = net.init(jax.random.PRNGKey(0), x)
    logits, z = net.forward(variables, x)
    x_again = net.invert(variables, z)

On CPU, compile gradient steps with `compiler_options()` (XLA's CPU pipeline otherwise
drops the engine's optimization barriers: the same results, computed more slowly):

    jax.jit(train_step, compiler_options=irevnet_jax.compiler_options())

Errors meant for the user (bad config, missing data, ...) are `irevnet_jax.UserError`, a
ValueError whose message names the fix.

Importing this package does not import TensorFlow.
"""
from irevnet_jax.errors import UserError
from irevnet_jax.model import presets
from irevnet_jax.model.compiler_options import for_platform as compiler_options
from irevnet_jax.model.network import IRevNet
from irevnet_jax.nets import Net, build, count_params

__all__ = ['build', 'compiler_options', 'count_params', 'presets', 'Net', 'IRevNet', 'UserError']
