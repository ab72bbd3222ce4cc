"""The numerics a model computes in: the one home of the exact-inversion rule (which dtype
and convolution precision a model computes in when it must invert exactly) and of the
training numerics (`train_model_config`).

Training computes in `train_dtype` ('auto': bfloat16 on GPU/TPU, float32 on CPU) with F's
convolutions at `train_precision` ('default': the backend's fastest, TF32-like for float32
on GPUs); parameters, optimizer state and the coupling streams stay float32.

F must compute the same function in forward and inverse, to float32 rounding: convolutions
in float32 (float64 stays float64) at precision 'highest' both ways. A model trained in
bfloat16 or at 'default' precision (TF32-like on NVIDIA GPUs) does not invert to float32
rounding; its exact twin, with the same variables, does (errors measured per setting:
benchmarks/RESULTS.md). `nets.Net.exact` applies the rule to a built net,
`exact_model_config` to a model config.
"""
import jax
import ml_collections

EXACT_PRECISION = 'highest'
TRAIN_DTYPES = ('auto', 'float32', 'bfloat16')


def exact_dtype(dtype) -> str:
  """The dtype of exact inversion for a model of `dtype`: 'float64' stays, else 'float32'."""
  return 'float64' if dtype == 'float64' else 'float32'


def with_numerics(model_config, dtype: str, precision: str) -> ml_collections.ConfigDict:
  """A copy of `model_config` computing in `dtype` with convolutions at `precision`."""
  model = model_config.copy_and_resolve_references()
  with model.unlocked():
    model.dtype = dtype
    model.precision = precision
  return model


def exact_model_config(model_config) -> ml_collections.ConfigDict:
  """The model as inverted and analysed: `exact_dtype`, convolutions at 'highest'."""
  return with_numerics(model_config, exact_dtype(model_config.get('dtype')), EXACT_PRECISION)


def resolved_train_dtype(train_dtype: str) -> str:
  """'float32' or 'bfloat16': `train_dtype` with 'auto' resolved for the default backend."""
  if train_dtype != 'auto':
    return train_dtype
  return 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'


def train_model_config(model_config, train_dtype: str,
                       train_precision: str) -> ml_collections.ConfigDict:
  """The model as trained: `resolved_train_dtype` compute, `train_precision` convolutions."""
  return with_numerics(model_config, resolved_train_dtype(train_dtype), train_precision)
