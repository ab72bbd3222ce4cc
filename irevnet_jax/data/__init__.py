"""Input: the bottom layer beside `model/` (neither imports the other).

  input_pipeline  sources by name: digits, synthetic, TFDS (imports no TensorFlow)
  tfds_options    the dataset config fields and their checks (no TensorFlow)
  tfds_pipeline   TFDS batches: the arithmetic training order, padded exactly-once eval
  tfds_records    TensorFlow without accelerators; opening, preparing, batched reads
  tfds_augment    decoding and augmentation ops (TensorFlow)
  tfds_prepare    preparing ImageNet from the downloaded tars (TensorFlow)
  data_order      which records form global batch s of epoch e, for any host count
"""
