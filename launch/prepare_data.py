"""Prepares a TFDS dataset once, before training: downloads CIFAR, builds ImageNet.

    python launch/prepare_data.py --dataset=cifar10 --data_dir=~/tensorflow_datasets
    python launch/prepare_data.py --dataset=imagenet2012 --data_dir=/data/tfds \
        --manual_dir=/data/imagenet_tars

ImageNet: register at https://image-net.org/download-images, download
ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into --manual_dir (default
<data_dir>/downloads/manual), then run this from ONE process (a few hours; ~155 GB of
TFRecords written to --data_dir, which may be a gs:// path). Train with the same data dir
(dataset.data_dir, or the TFDS_DATA_DIR environment variable).
"""
import argparse
import os

from irevnet_jax import tfds_pipeline


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dataset', required=True, choices=sorted(tfds_pipeline.SPECS))
  parser.add_argument('--data_dir', default=None,
                      help='TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).')
  parser.add_argument('--manual_dir', default=None,
                      help='ImageNet: folder with ILSVRC2012_img_{train,val}.tar.')
  args = parser.parse_args()
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  builder = tfds_pipeline.prepare(args.dataset, args.data_dir, args.manual_dir)
  print(f'{args.dataset} is ready in {builder.data_dir}')
  for name, split in builder.info.splits.items():
    print(f'  {name}: {split.num_examples} examples')


if __name__ == '__main__':
  main()
