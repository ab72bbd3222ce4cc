"""Prepares a TFDS dataset once, before training, in the ArrayRecord format the pipeline reads.

    python launch/prepare_data.py --dataset=cifar10 --data_dir=~/tensorflow_datasets
    python launch/prepare_data.py --dataset=imagenet2012 --data_dir=/data/tfds \
        --manual_dir=/data/imagenet_tars
    python launch/prepare_data.py --dataset=imagenet2012 --data_dir=/data/tfds \
        --small_copy_dir=/data/tfds_256 --short_side=256     # optional, faster to decode

ImageNet: register at https://image-net.org/download-images, download
ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into --manual_dir (default
<data_dir>/downloads/manual), then run this from ONE process (a few hours; ~155 GB of
ArrayRecord files written to --data_dir). A dataset prepared earlier in TFRecord gets
ArrayRecord files written beside its TFRecords instead (as much disk again; the TFRecords
may be deleted afterwards). Train with the same data dir (dataset.data_dir, or the
TFDS_DATA_DIR environment variable).

--data_dir must be a local (or mounted) folder: array_record writes local files only. For
a TPU pod, prepare on a disk, then copy the dataset's folder to a bucket, e.g.
`gcloud storage cp -r /data/tfds/imagenet2012 gs://BUCKET/tfds/`, and train with
dataset.data_dir=gs://BUCKET/tfds (array_record >= 0.8.3 reads gs://).

--small_copy_dir also writes a copy whose JPEGs have their shorter side reduced to at
most --short_side pixels (ImageNet at 256: about half the pixels to decode per image);
train on it with dataset.data_dir set to that dir. docs/data_and_launch.md says what it
buys and what it changes.
"""
import argparse
import os

from irevnet_jax.data import tfds_options, tfds_records


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dataset', required=True, choices=sorted(tfds_options.SPECS))
  parser.add_argument('--data_dir', default=None,
                      help='TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).')
  parser.add_argument('--manual_dir', default=None,
                      help='ImageNet: folder with ILSVRC2012_img_{train,val}.tar.')
  parser.add_argument('--small_copy_dir', default=None,
                      help='Also write a copy with shrunk JPEGs into this data dir.')
  parser.add_argument('--short_side', type=int, default=256,
                      help='The copy\'s largest shorter side, in pixels.')
  parser.add_argument('--quality', type=int, default=90, help='The copy\'s JPEG quality.')
  args = parser.parse_args()
  for flag in ('data_dir', 'small_copy_dir'):
    if '://' in (getattr(args, flag) or ''):
      parser.error(f'--{flag}={getattr(args, flag)}: array_record writes local files only; '
                   'prepare into a local folder, then copy it to the bucket (e.g. `gcloud '
                   'storage cp -r DIR/imagenet2012 gs://BUCKET/tfds/`).')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  builder = tfds_records.prepare(args.dataset, args.data_dir, args.manual_dir)
  _describe(args.dataset, builder)
  if args.small_copy_dir:
    from irevnet_jax.data import tfds_prepare  # pylint: disable=g-import-not-at-top
    if tfds_options.SPECS[args.dataset].kind != 'imagenet':
      parser.error('--small_copy_dir is for imagenet2012 (CIFAR images are 32 x 32).')
    tfds_prepare.write_small_copy(builder, args.small_copy_dir, args.short_side, args.quality)
    _describe(args.dataset, tfds_prepare.open_builder(args.dataset, args.small_copy_dir))


def _describe(name, builder):
  from irevnet_jax.data import tfds_prepare  # pylint: disable=g-import-not-at-top
  formats = ', '.join(sorted(tfds_prepare.file_formats(builder)))
  print(f'{name} is ready in {builder.data_dir} ({formats})')
  for split_name, split in builder.info.splits.items():
    print(f'  {split_name}: {split.num_examples} examples')


if __name__ == '__main__':
  main()
