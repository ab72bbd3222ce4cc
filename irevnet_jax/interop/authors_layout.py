"""Where each entry of the authors' PyTorch state dict lives in irevnet_jax's variables.

The authors' `iRevNet` (github jhjacobsen/pytorch-i-revnet) names its weights

    stack.{b}.bottleneck_block.{j}.{weight,bias,running_mean,running_var,num_batches_tracked}
    bn1.{...}                       head BatchNorm over z's channels
    linear.{weight,bias}            classifier, weight (num_classes, channels)

with `b` counting blocks over the whole network and `j` the layer inside F:
the network's first block (no leading BN) has conv k1 at 0, BNs at 1 and 5,
convs at 3 and 7; every other block has BNs at 0, 3 and 7, convs at 2, 5, 9.
Convs are OIHW without bias. irevnet_jax keeps each stage's leading block
under `stages_{s}/first` and stacks the variables of its other blocks on a
leading axis under `stages_{s}/rest`; kernels are HWIO, the dense kernel is
(in, out).
"""
import dataclasses
import re
from typing import Optional, Tuple

from irevnet_jax.model.layout import Architecture, BlockSpec

BN_FIELDS = (  # authors' name -> (collection, irevnet_jax name); None: no counterpart
    ('weight', 'params', 'scale'),
    ('bias', 'params', 'bias'),
    ('running_mean', 'batch_stats', 'mean'),
    ('running_var', 'batch_stats', 'var'),
    ('num_batches_tracked', None, None),
)
COUNT = 'num_batches_tracked'

# (authors' layer index j, irevnet_jax module name, conv number 1-3 or 0 for a BN)
_FIRST_BLOCK_LAYERS = ((0, 'Conv_0', 1), (1, 'BatchNorm_0', 0), (3, 'Conv_1', 2),
                       (5, 'BatchNorm_1', 0), (7, 'Conv_2', 3))
_BLOCK_LAYERS = ((0, 'BatchNorm_0', 0), (2, 'Conv_0', 1), (3, 'BatchNorm_1', 0),
                 (5, 'Conv_1', 2), (7, 'BatchNorm_2', 0), (9, 'Conv_2', 3))


@dataclasses.dataclass(frozen=True)
class Entry:
  """One state-dict entry and the irevnet_jax leaf it maps to.

  `kind`: 'conv' (OIHW <-> HWIO), 'dense' ((out, in) <-> (in, out)), 'vector'
  (as is) or 'count' (num_batches_tracked: no counterpart, never required).
  `row`: index on the leading (stacked) axis of a `rest` leaf, else None.
  """
  key: str                       # without any 'module.' prefix
  kind: str
  shape: Tuple[int, ...]         # in the authors' layout
  collection: Optional[str]      # 'params' | 'batch_stats' | None for counts
  path: Tuple[str, ...]          # inside the collection
  row: Optional[int]
  stacked: int                   # size of the leading axis of the leaf, 0 if none
  what: str                      # for error messages, e.g. 'conv k3 of block 7 (stage 1)'

  @property
  def leaf_shape(self) -> Tuple[int, ...]:
    """The shape of the whole irevnet_jax leaf (with the stacked axis)."""
    if self.kind == 'conv':
      o, i, h, w = self.shape
      own = (h, w, i, o)
    elif self.kind == 'dense':
      own = self.shape[::-1]
    else:
      own = self.shape
    return ((self.stacked,) if self.stacked else ()) + tuple(own)


def _bn_entries(prefix, path, width, row, stacked, what):
  return [Entry(f'{prefix}.{name}', 'count' if collection is None else 'vector',
                () if collection is None else (width,), collection,
                path + (leaf,) if leaf else path, row, stacked, what)
          for name, collection, leaf in BN_FIELDS]


def _block_entries(arch: Architecture, spec: BlockSpec, index, stage, group, row, stacked):
  hidden = spec.width // arch.bottleneck_mult
  k1, k2, k3 = arch.kernel_sizes
  conv_shapes = {1: (hidden, spec.f_in_channels, k1, k1), 2: (hidden, hidden, k2, k2),
                 3: (spec.width, hidden, k3, k3)}
  bn_widths = [spec.f_in_channels, hidden, hidden] if not spec.first else [hidden, hidden]
  path = (f'stages_{stage}', group)
  out = []
  for j, module, conv in _FIRST_BLOCK_LAYERS if spec.first else _BLOCK_LAYERS:
    prefix = f'stack.{index}.bottleneck_block.{j}'
    where = f'of block {index} (stage {stage})'
    if conv:
      out.append(Entry(f'{prefix}.weight', 'conv', conv_shapes[conv], 'params',
                       path + (module, 'kernel'), row, stacked, f'conv k{conv} {where}'))
    else:
      out += _bn_entries(prefix, path + (module,), bn_widths.pop(0), row, stacked,
                         f'BatchNorm {where}')
  return out


def entries(arch: Architecture):
  """Every entry of the authors' state dict for `arch`, in their order."""
  out = []
  index = 0
  for stage, spec in enumerate(arch.stages):
    out += _block_entries(arch, spec.first, index, stage, 'first', None, 0)
    for row in range(spec.num_rest):
      out += _block_entries(arch, spec.rest, index + 1 + row, stage, 'rest', row, spec.num_rest)
    index += 1 + spec.num_rest
  channels = arch.z_shape[-1]
  out += _bn_entries('bn1', ('head_norm',), channels, None, 0, 'head BatchNorm bn1')
  out.append(Entry('linear.weight', 'dense', (arch.num_classes, channels), 'params',
                   ('classifier', 'kernel'), None, 0, 'classifier linear'))
  out.append(Entry('linear.bias', 'vector', (arch.num_classes,), 'params',
                   ('classifier', 'bias'), None, 0, 'classifier linear'))
  return out


def _block_convs(shapes, index):
  """(k1, k2, k3) conv weight shapes of block `index`, in layer order."""
  pattern = re.compile(rf'stack\.{index}\.bottleneck_block\.(\d+)\.weight$')
  convs = sorted((int(m.group(1)), shape) for key, shape in shapes.items()
                 if (m := pattern.match(key)) and len(shape) == 4)
  if len(convs) != 3:
    raise ValueError(f'block {index} has {len(convs)} convolutions')
  return [shape for _, shape in convs]


def infer_fields(shapes) -> dict:
  """The model config fields a state dict implies: {field: value}.

  `shapes`: {key without prefix: shape}. Strides are not stored; they are
  read from the channel counts, which is exact in a bijective net (a stride-2
  block's conv k3 has 4x as many outputs as its conv k1 has inputs). Fields
  that cannot be read (an unusual or broken file) are left out.
  """
  fields = {}
  if 'linear.weight' in shapes and len(shapes['linear.weight']) == 2:
    fields['num_classes'] = int(shapes['linear.weight'][0])
  indices = sorted({int(m.group(1)) for key in shapes if (m := re.match(r'stack\.(\d+)\.', key))})
  if not indices or indices != list(range(len(indices))):
    return fields
  try:
    convs = [_block_convs(shapes, b) for b in indices]
  except ValueError:
    return fields
  blocks, strides, widths = [], [], []
  for k1, _, k3 in convs:
    width, stride = int(k3[0]), 2 if k3[0] == 4 * k1[1] else 1
    if stride == 2 or not widths or width != widths[-1]:
      blocks.append(0)
      strides.append(stride)
      widths.append(width)
    blocks[-1] += 1
  k1, k2, k3 = convs[0]
  fields.update(blocks=tuple(blocks), strides=tuple(strides), widths=tuple(widths),
                kernel_sizes=(int(k1[-1]), int(k2[-1]), int(k3[-1])))
  if k1[0] and k3[0] % k1[0] == 0:
    fields['bottleneck_mult'] = int(k3[0] // k1[0])
  return fields


def config_hint(shapes, model_config) -> str:
  """'The file implies model.widths=(24, 96) (this config: (24, 24)); ...', or ''."""
  differ = []
  for field, value in infer_fields(shapes).items():
    current = model_config.get(field)
    current = tuple(current) if isinstance(current, (list, tuple)) else current
    if current != value:
      differ.append(f'model.{field}={value} (this config: {current})')
  return f' The file implies {"; ".join(differ)}.' if differ else ''


def field_for(entry: Entry, shape) -> str:
  """The config field(s) that decide the shape of one entry, for a mismatch message."""
  if entry.key.startswith('linear.') and len(shape) == len(entry.shape) and (
      shape[0] != entry.shape[0]):
    return f'model.num_classes (the file has {shape[0]} classes)'
  if entry.kind == 'conv' and len(shape) == 4 and tuple(shape[2:]) != entry.shape[2:]:
    return 'model.kernel_sizes'
  return 'model.widths, model.blocks, model.strides or model.bottleneck_mult'
