"""Trains a token-dropping model, phase by phase, and evaluates it.

  AdapLeR (configs/<task>.py):      finetune -> saliency -> adapler -> evaluate
  LAT     (configs/<task>_lat.py):  finetune -> lengthdrop -> evaluate
  either, after training:           search (per-layer eta multipliers / length configs)

  python train.py --config configs/sst2.py --workdir runs/sst2 [--phase all|finetune|...]

Every field of the config file can be set with --config.<field>=VALUE, e.g.
  python train.py --config configs/sst2.py --workdir runs/sst2 --config.train.learning_rate=3e-5
and --print_config lists every field with its value, default and meaning, then exits:
  python train.py --config configs/sst2.py --print_config [--config.<field>=VALUE ...]
Your own CSV/TSV/JSON-lines files: --config.task=custom --config.data.train_file=train.csv
  --config.data.dev_file=dev.csv [--config.data.text_fields=text --config.data.label_field=label].
More in docs/cli.md.
"""

from absl import flags, logging
from ml_collections import config_flags

from adapler_jax import pipeline
from adapler_jax.cli import enable_compilation_cache, run_app
from adapler_jax.errors import UserError
from adapler_jax.pipeline import checks
from adapler_jax.pipeline.config import format_config
from adapler_jax.pipeline.context import check_same_run
from adapler_jax.pipeline.workdir import check_dir
from adapler_jax.train import parallel

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a configs/<task>.py file; set any of its fields with "
    "--config.<field>=VALUE (list them with --print_config).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, summary.")
_PHASE = flags.DEFINE_enum("phase", "all", pipeline.PHASES, "Which phase to run.")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print the resolved config, one "
                                  "field per line with its default and help, and exit.")
flags.mark_flag_as_required("config")


def main(argv):
  del argv
  if _PRINT_CONFIG.value:
    checks.check_config(_CONFIG.value)  # as it would run: a value a run refuses is refused.
    checks.frozen_groups(_CONFIG.value)
    path = config_flags.get_config_filename(flags.FLAGS[_CONFIG.name])
    print(f"# {path} with overrides; set a field with --config.<field>=VALUE")
    print(format_config(_CONFIG.value))
    return
  if not _WORKDIR.value:
    raise UserError("--workdir is missing; pass a directory for the run's checkpoints, e.g. "
                    "--workdir runs/demo")
  logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO.
  enable_compilation_cache(_CONFIG.value)
  parallel.maybe_initialize_distributed()  # multi-host jobs only; before any other JAX call.
  # Before prepare writes config.json: a config of the stored run's method, then its phase.
  workdir = check_dir(_WORKDIR.value)
  check_same_run(_CONFIG.value, workdir)
  pipeline.check_phase(_CONFIG.value, _PHASE.value)
  pipeline.check_ready(_CONFIG.value, workdir, _PHASE.value)
  run = pipeline.prepare(_CONFIG.value, workdir, phase=_PHASE.value)
  result = pipeline.run_phase(run, _PHASE.value)
  if isinstance(result, dict) and run.is_main_process:
    print(pipeline.format_result(run, result))


if __name__ == "__main__":
  run_app(main)
