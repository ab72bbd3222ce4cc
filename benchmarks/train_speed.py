"""Training throughput of the runner's pmapped step: steps/s and images/s per config.

    python benchmarks/train_speed.py     # digits (real data) + cifar10, 1 block/stage (synthetic)
    python benchmarks/train_speed.py --configs=bijective --blocks= --batch_size=256 --train_dtype=bfloat16

Each config is experiments/configs/<name>.py; every one but digits reads
synthetic images of its model's input shape (no dataset or TensorFlow needed).
The timed loop is the training loop's own: prefetched batches (uint8, put on the
devices two steps ahead), the compiled train step of `irevnet_jax.train.program`;
the first `--warmup` steps (compilation included) are not timed. Prints a table.
"""
import importlib
import time

from absl import app
from absl import flags
import jax
import ml_collections

from irevnet_jax import count_params

from irevnet_jax.data import input_pipeline
from irevnet_jax.train import config as config_lib
from irevnet_jax.train import program as program_lib
from irevnet_jax.train import state as state_lib
from irevnet_jax.train import steps as steps_lib

flags.DEFINE_list('configs', ['digits', 'cifar10'], 'Names in experiments/configs/.')
flags.DEFINE_integer('steps', 20, 'Timed steps per config.')
flags.DEFINE_integer('warmup', 3, 'Untimed steps first (compilation).')
flags.DEFINE_integer('batch_size', 0, 'Global batch; 0 = the config\'s (digits) or 16 (others).')
flags.DEFINE_list('blocks', ['1', '1', '1'],
                  'Override model.blocks of the synthetic configs (empty: keep the config\'s); '
                  'the default keeps a CPU run short.')
flags.DEFINE_enum('train_dtype', 'auto', ['auto', 'float32', 'bfloat16'],
                  "Training compute dtype ('auto': bfloat16 on GPU/TPU, float32 on CPU).")
flags.DEFINE_enum('parallel', 'pmap', ['pmap', 'shard_map'], 'Parallel back end.')
flags.DEFINE_string('backprop', '', "Override model.backprop: autodiff | remat | reversible.")
FLAGS = flags.FLAGS


def benchmark(name):
  config = importlib.import_module(f'experiments.configs.{name}').get_config()
  if name != 'digits':
    config.dataset = ml_collections.ConfigDict({"name": "synthetic"})
    config.batch_size = 16
    if FLAGS.blocks:
      config.model.blocks = tuple(int(b) for b in FLAGS.blocks)
  if FLAGS.batch_size:
    config.batch_size = FLAGS.batch_size
  config.train_dtype = FLAGS.train_dtype
  config.parallel = FLAGS.parallel
  if FLAGS.backprop:
    config.model.backprop = FLAGS.backprop
  devices = jax.local_devices()
  source = input_pipeline.get_source(config.dataset, tuple(config.model.input_shape))
  normalization = steps_lib.Normalization(source.pixel_mean, source.pixel_std)
  program = program_lib.build_program(config, source.num_train_examples, normalization,
                                      devices)
  state = program.backend.put_state(state_lib.create_state(program.train_net, program.tx, 0))
  batches = program.backend.prefetch(
      source.train_batches(config.batch_size, 0, 1, seed=0, start_step=0))

  def run(steps):
    nonlocal state
    for _ in range(steps):
      state, step_metrics = program.train_step(state, next(batches))
    jax.block_until_ready(step_metrics)

  start = time.perf_counter()
  run(FLAGS.warmup)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  run(FLAGS.steps)
  rate = FLAGS.steps / (time.perf_counter() - start)
  blocks = ','.join(map(str, config.model.blocks))
  return (name, source.name, blocks, count_params(program.train_net), config.model.backprop,
          config_lib.resolved_train_dtype(config), config.batch_size, len(devices),
          compile_s, rate, rate * config.batch_size)


def main(argv):
  del argv
  header = ('config', 'data', 'blocks', 'params', 'backprop', 'dtype', 'batch', 'devices',
            'warmup s', 'steps/s', 'images/s')
  rows = [benchmark(name) for name in FLAGS.configs]
  print(f'\n{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}')
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for row in rows:
    cells = [f'{v:,}' if isinstance(v, int) else f'{v:.2f}' if isinstance(v, float) else str(v)
             for v in row]
    print('| ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
  app.run(main)
