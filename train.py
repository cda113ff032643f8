"""Trains AdapLeR: fine-tune -> saliency -> AdapLeR training -> evaluation.

  python train.py --config configs/sst2.py --workdir runs/sst2 [--phase all|finetune|saliency|adapler|evaluate]
  python train.py --config configs/sst2.py --workdir runs/sst2 --config.train.learning_rate=3e-5
"""

from absl import flags, logging
from ml_collections import config_flags

from adapler_jax import pipeline
from adapler_jax.cli import run_app
from adapler_jax.train import parallel

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/<task>.py file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, summary.")
_PHASE = flags.DEFINE_enum("phase", "all", pipeline.PHASES, "Which phase to run.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO.
  parallel.maybe_initialize_distributed()  # multi-host jobs only; before any other JAX call.
  run = pipeline.prepare(_CONFIG.value, _WORKDIR.value)
  result = pipeline.run_phase(run, _PHASE.value)
  if isinstance(result, dict) and run.is_main_process:
    print(pipeline.format_result(run, result))


if __name__ == "__main__":
  run_app(main)
