"""What a network is, nothing about running it: the bottom layer with `data/` and `run/`.

  ops          invertible primitives as pairs: psi / psi_inverse, split / merge, pad
  layout       the frozen types a validated config becomes (Architecture, BlockSpec)
  validation   config and array checks whose errors name the fix
  presets      the model configs and `layout(config)`
  collectives  exact, fixed-order cross-device means (synchronised BN, gradients)
  norm         batch normalisation with the authors' momentum and ordered means
  blocks       the bottleneck F and its variables
  reversible   the one engine: coupling steps in every backprop mode, and their inverses
  network      the i-RevNet Flax module
  compiler_options  the XLA options gradient steps compile with (CPU: keep barriers)
"""
