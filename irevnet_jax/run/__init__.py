"""A run directory: the bottom layer beside `model/` and `data/`, read by `train/` and up.

  workdir      the lock, config history and the run's files (local paths or gs://)
  checkpoints  Orbax saves in the background, CRC-checked restores, fallbacks
  checksums    the CRC-32s written in Orbax's commit thread
  metrics      metrics.jsonl, TensorBoard events, console lines
  orbax_logs   quieting Orbax's expected warnings
"""
