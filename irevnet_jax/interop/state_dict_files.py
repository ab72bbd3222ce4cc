"""Reading and writing state dicts: NumPy `.npz` without PyTorch, `.pth` / `.pth.tar` with it.

A state dict here is an ordered mapping name -> numpy array. PyTorch is
imported only to read or write a PyTorch file; it is an optional extra.
"""
import collections
import os
import re
import zipfile
from typing import Mapping

import numpy as np

from irevnet_jax.errors import UserError
from irevnet_jax.interop import pickled_classes
from irevnet_jax.run import paths

TORCH_EXTRA = "pip install -e '.[torch]'"
NPZ_SNIPPET = (
    "import numpy as np, torch\n"
    "checkpoint = torch.load('IN.pth.tar', map_location='cpu', weights_only=True)\n"
    "np.savez('OUT.npz', **{k: v.numpy() for k, v in checkpoint.get('state_dict', checkpoint).items()})")
TORCH_SUFFIXES = ('.pth.tar', '.pth', '.pt')
ZIP_MAGIC = (b'PK\x03\x04', b'PK\x05\x06')
# A legacy (non-zip) torch.save file is a pickle whose first object is this number.
TORCH_LEGACY_MAGIC = (0x1950a86a20f9469cfc6c).to_bytes(10, 'little')


class CheckpointFormatError(UserError):
  """A file that is not a state dict or checkpoint in a format read here."""


class PyTorchMissingError(UserError, ImportError):
  """A PyTorch file was to be read or written, and PyTorch is not installed."""


def npz_snippet(path) -> str:
  """Three lines of Python that turn the PyTorch file `path` into an .npz state dict."""
  out = path[:-len('.pth.tar')] if path.endswith('.pth.tar') else os.path.splitext(path)[0]
  return NPZ_SNIPPET.replace("'IN.pth.tar'", repr(path)).replace("'OUT.npz'", repr(out + '.npz'))


def _import_torch(path, reading: bool):
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    if reading:
      route = ('Or convert it to .npz where PyTorch is installed, and read the .npz here '
               f'(no PyTorch needed):\n{npz_snippet(path)}')
    else:
      route = 'Or write a .npz instead (no PyTorch needed).'
    raise PyTorchMissingError(
        f'{"Reading" if reading else "Writing"} {path!r} (a PyTorch file) needs PyTorch, which '
        f'is not installed. Install the optional extra: {TORCH_EXTRA} (the CPU build '
        f'suffices). {route}') from error
  return torch


def _format_of(path) -> str:
  """'npz' or 'torch', from the file's contents (not its name)."""
  with open(path, 'rb') as f:
    head = f.read(32)
  if head[:4] in ZIP_MAGIC:
    try:
      with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    except zipfile.BadZipFile as error:
      raise CheckpointFormatError(f'{path!r} is a damaged zip archive: {error}.') from error
    if any(name.endswith('data.pkl') for name in names):
      return 'torch'                       # PyTorch's zip format (the default since 1.6)
    if names and all(name.endswith('.npy') for name in names):
      return 'npz'
    raise CheckpointFormatError(
        f'{path!r} is a zip archive, but neither a NumPy .npz of arrays nor a PyTorch '
        f'checkpoint (it holds {names[:5]}).')
  if head[:1] == b'\x80' and TORCH_LEGACY_MAGIC in head:
    return 'torch'                         # PyTorch's legacy (non-zip) format
  raise CheckpointFormatError(
      f'{path!r} is not a checkpoint: neither a NumPy .npz archive nor a PyTorch file '
      f'(.pth / .pth.tar, zip or legacy format); it starts with {head[:8]!r}.')


def _load_npz(path):
  try:
    with np.load(path, allow_pickle=False) as archive:
      return collections.OrderedDict((name, archive[name]) for name in archive.files)
  except (ValueError, OSError, zipfile.BadZipFile) as error:
    raise CheckpointFormatError(f'{path!r} cannot be read as a .npz state dict: {error}') from error


def _state_dict_of(path, obj, torch):
  """The state dict inside what torch.load returned: a checkpoint dict, a state dict, or
  the authors' CIFAR checkpoint {'model': the whole model, 'acc', 'epoch'}."""
  if isinstance(obj, Mapping) and isinstance(obj.get('state_dict'), Mapping):
    obj = obj['state_dict']            # epoch, arch, best_prec1, optimizer... are ignored
  elif isinstance(obj, Mapping) and hasattr(obj.get('model'), 'state_dict'):
    obj = obj['model'].state_dict()    # keys 'module.' + ..., as their DataParallel saves
  if isinstance(obj, Mapping) and obj and all(torch.is_tensor(v) for v in obj.values()):
    return obj
  what = f'a dict with keys {list(obj)[:8]}' if isinstance(obj, Mapping) else type(obj).__name__
  raise CheckpointFormatError(
      f'{path!r} holds {what}, not a state dict: expected a mapping name -> tensor, or a '
      f"checkpoint dict with a 'state_dict' entry.")


ESCAPE_CODES = re.compile(r'\x1b\[[0-9;?]*[A-Za-z]')


def plain_text(text: str) -> str:
  """`text` without terminal escape codes (colours, bold), as PyTorch's errors carry."""
  return ESCAPE_CODES.sub('', text)


def _load_torch(path, weights_only):
  if weights_only:
    whole_model = pickled_classes.whole_model_message(path)
    if whole_model:
      raise CheckpointFormatError(whole_model)
  torch = _import_torch(path, reading=True)
  try:
    obj = torch.load(path, map_location='cpu', weights_only=weights_only)
  except ModuleNotFoundError as error:
    raise CheckpointFormatError(pickled_classes.missing_module_message(path, error)) from error
  except Exception as error:  # torch.load raises many kinds: UnpicklingError, RuntimeError...
    text = plain_text(str(error)).strip()
    message = text.splitlines()[0].rstrip('.') if text else ''
    hint = (' It needs more than tensors to unpickle: if you trust the file, pass '
            'weights_only=False.' if weights_only and 'weights_only' in str(error) else '')
    raise CheckpointFormatError(
        f'{path!r} cannot be read by torch.load ({type(error).__name__}: {message}).'
        f'{hint}') from error
  state_dict = _state_dict_of(path, obj, torch)
  out = collections.OrderedDict()
  for key, tensor in state_dict.items():
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:     # NumPy has no bfloat16: widen, exactly
      tensor = tensor.float()
    out[key] = tensor.numpy()
  return out


def load_state_dict(path, *, weights_only: bool = True) -> 'collections.OrderedDict':
  """Reads a state dict (name -> numpy array, in the file's order) from a file.

  Formats, told apart by content: a NumPy `.npz` of arrays (no PyTorch
  needed); a PyTorch file (`.pth`, `.pth.tar`; zip or legacy format) holding
  a state dict or a checkpoint dict with a 'state_dict' entry (the other
  entries, e.g. epoch, arch, best_prec1, optimizer, are ignored), read with
  `torch.load(path, map_location='cpu', weights_only=...)`. Keys are returned
  as stored ('module.' prefixes kept).

  Raises `CheckpointFormatError` (a UserError) for a file that is none of
  these, `PyTorchMissingError` (a UserError and ImportError) for a PyTorch file without PyTorch.
  """
  path = os.fspath(path)
  if _format_of(path) == 'npz':
    return _load_npz(path)
  return _load_torch(path, weights_only)


def _as_arrays(state_dict) -> 'collections.OrderedDict[str, np.ndarray]':
  """Every value as a numeric numpy array, checked before anything is written."""
  arrays = collections.OrderedDict()
  for key, value in state_dict.items():
    arrays[key] = np.asarray(value)
    if arrays[key].dtype == object:
      raise TypeError(f'State dict entry {key!r} is a {type(value).__name__}, not a numeric '
                      'array (a state dict of shapes only cannot be written).')
  return arrays


def authors_checkpoint(torch, arrays, epoch=0, best_prec1=0.0, arch='irevnet') -> dict:
  """The checkpoint dict the authors' ImageNet script saves and `--resume`s from.

  {'epoch', 'arch', 'state_dict' (keys prefixed 'module.', as their
  DataParallel model writes them), 'best_prec1', 'optimizer'}; the optimizer
  entry is a fresh SGD state (lr 0.1, momentum 0.9, weight decay 1e-4, their
  settings) over as many parameters as the state dict has weights and biases.
  """
  state = collections.OrderedDict(
      (key if key.startswith('module.') else 'module.' + key, torch.from_numpy(np.array(value)))
      for key, value in arrays.items())
  num_params = sum(key.endswith(('.weight', '.bias')) for key in state)
  params = [torch.nn.Parameter(torch.empty(0)) for _ in range(num_params)]
  optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
  return {'epoch': int(epoch), 'arch': arch, 'state_dict': state,
          'best_prec1': float(best_prec1), 'optimizer': optimizer.state_dict()}


def save_state_dict(path, state_dict: Mapping, *, epoch: int = 0, best_prec1: float = 0.0):
  """Writes a state dict (name -> array); the format follows the suffix of `path`.

  - `.npz`: the arrays under their keys, in order (no PyTorch needed);
  - `.pth.tar`: the authors' checkpoint dict (see `authors_checkpoint`; `epoch`
    and `best_prec1` go there), which their scripts `--resume` from;
  - `.pth` / `.pt`: the bare state dict of tensors, for `model.load_state_dict`.
  The PyTorch formats need PyTorch. Nothing is written when an error is raised.
  """
  path = os.fspath(path)
  if not path.endswith(('.npz',) + TORCH_SUFFIXES):
    raise UserError(f'Unknown suffix in {path!r}: use .npz (no PyTorch needed), .pth.tar '
                    "(the authors' checkpoint dict) or .pth / .pt (a bare state dict).")
  arrays = _as_arrays(state_dict)
  if path.endswith('.npz'):
    paths.write_local(path, lambda f: np.savez(f, **arrays))
    return
  torch = _import_torch(path, reading=False)
  if path.endswith('.pth.tar'):
    obj = authors_checkpoint(torch, arrays, epoch, best_prec1)
  else:
    obj = collections.OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in arrays.items())
  paths.write_local(path, lambda f: torch.save(obj, f))
