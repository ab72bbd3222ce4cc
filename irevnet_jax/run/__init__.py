"""A run directory: the bottom layer beside `model/` and `data/`, read by `train/` and up.

  paths        local paths and URLs (gs://...) alike, one URL back end (fsspec); atomic writes
  store_errors transient store errors (retry, keep everything) vs evidence of corruption
  workdir      checking a run directory, cleaning up after a refused run; the names below
  workdir_lock one run at a time: flock locally, on gs:// a lease renewed by conditional writes
  gcs_objects  one GCS object read with its generation, written or deleted only at a generation
  run_config   config.json and config_history.jsonl: changes a resume may make
  checkpoints  Orbax saves in the background, failed saves as one error; load_run
  checkpoint_restore  the newest checkpoint that restores cleanly, verified; fallbacks
  checksums    the CRC-32s written in Orbax's commit thread
  metrics      metrics.jsonl, TensorBoard events, console lines
  orbax_logs   quieting Orbax's expected warnings
"""
