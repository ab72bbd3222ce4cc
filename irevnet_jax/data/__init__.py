"""Input: the bottom layer beside `model/` (neither imports the other).

  input_pipeline  sources by name: digits, synthetic, TFDS (imports no TensorFlow)
  tfds_options    the dataset config fields and their checks (no TensorFlow)
  tfds_pipeline   TFDS / ArrayRecord batches in the arithmetic data order (TensorFlow)
  tfds_augment    decoding and augmentation ops (TensorFlow)
  tfds_prepare    preparing ImageNet from the downloaded tars (TensorFlow)
  data_order      which records form global batch s of epoch e, for any host count
"""
