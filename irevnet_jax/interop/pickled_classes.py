"""The classes a PyTorch file pickles, read without PyTorch and without unpickling anything.

    pickled_classes(path)        # {'torch.nn.parallel.data_parallel.DataParallel', ...}
    whole_model_message(path)    # one line for the authors' CIFAR checkpoint, or None

The authors' `CIFAR_main.py` saves {'model': <the whole DataParallel iRevNet, pickled>,
'acc', 'epoch'}: no state dict, and a model whose class (`models.iRevNet.iRevNet`) only
unpickles where their code is importable. Their ImageNet script saves a state dict.
"""
import pickletools
import zipfile
from typing import Optional, Set

TORCH_LEGACY_PICKLES = 3   # magic number, protocol version, sys info; then the object
AUTHORS_REPO = 'https://github.com/jhjacobsen/pytorch-i-revnet'


def _globals(stream) -> Set[str]:
  """'module.Name' of every GLOBAL / INST opcode of one pickle (its strings, for STACK_GLOBAL)."""
  found, strings = set(), []
  for opcode, arg, _ in pickletools.genops(stream):
    if opcode.name in ('GLOBAL', 'INST'):
      found.add(arg.replace(' ', '.'))
    elif opcode.name == 'STACK_GLOBAL' and len(strings) >= 2:
      found.add(f'{strings[-2]}.{strings[-1]}')
    elif isinstance(arg, str):
      strings.append(arg)
  return found


def pickled_classes(path) -> Set[str]:
  """The classes and functions the object pickle of a PyTorch file (zip or legacy) names;
  an empty set when it cannot be read."""
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith('data.pkl'))
        with archive.open(name) as stream:
          return _globals(stream)
    with open(path, 'rb') as stream:
      for _ in range(TORCH_LEGACY_PICKLES):
        for _ in pickletools.genops(stream):
          pass
      return _globals(stream)
  except (OSError, ValueError, StopIteration, zipfile.BadZipFile):
    return set()


def _model_classes(classes):
  return sorted(c for c in classes if c.endswith(('.iRevNet', '.DataParallel',
                                                  '.DistributedDataParallel')))


def whole_model_message(path, classes: Optional[Set[str]] = None) -> Optional[str]:
  """One line naming what to do with a file that pickles a whole model (the authors' CIFAR
  checkpoint) instead of a state dict; None for other files."""
  classes = pickled_classes(path) if classes is None else classes
  models = _model_classes(classes)
  if not models:
    return None
  return (f'{path!r} pickles a whole model ({", ".join(models)}), not a state dict: the '
          f"layout of the authors' CIFAR_main.py checkpoint ({{'model', 'acc', 'epoch'}}). "
          f'Where PyTorch is installed and their code ({AUTHORS_REPO}) is on PYTHONPATH, read '
          f'it with weights_only=False (only for a file you trust), which takes the state '
          f"dict out of 'model'.")


def missing_module_message(path, error: ModuleNotFoundError) -> str:
  """One line for torch.load(weights_only=False) failing on the authors' model class."""
  return (f'{path!r} pickles a class of module {error.name!r}, which is not importable '
          f"here: put the authors' code ({AUTHORS_REPO}, the folder that holds "
          f'models/iRevNet.py) on PYTHONPATH.')
