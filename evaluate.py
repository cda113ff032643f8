"""Evaluates a trained run with hard removal and writes a JSON report.

  python evaluate.py --workdir runs/sst2 [--split dev|test] [--batch-size 32]
      [--engine bucketed|per-example] [--flops analytic|paper] [--output FILE]
"""

import json
from pathlib import Path

from absl import app, flags, logging

from adapler_jax import pipeline
from adapler_jax.cli import run_cli
from adapler_jax.eval import report
from adapler_jax.infer import flops

_WORKDIR = flags.DEFINE_string("workdir", None, "The --workdir of a finished train.py run.")
_SPLIT = flags.DEFINE_string("split", "dev", "Split to evaluate: dev or test (as the config "
                             "defines them).")
_BATCH = flags.DEFINE_integer("batch_size", None, "Batch size (default: the config's).")
_ENGINE = flags.DEFINE_enum("engine", None, report.ENGINES, "Inference engine (default: "
                            "the config's).")
_FLOPS = flags.DEFINE_enum("flops", "analytic", flops.MODES, "FLOPs count: analytic from the "
                           "model's shape, or the paper's fitted BERT-base constants.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON file (default: WORKDIR/eval_<split>.json).")
flags.DEFINE_alias("batch-size", "batch_size")
flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  trained = pipeline.load_run(_WORKDIR.value)
  config = trained.config
  data = trained.eval_dataset(_SPLIT.value)
  result = report.evaluate_adapler(
      trained.adapler_cfg, trained.adapler_params, data, trained.task.metric,
      engine=_ENGINE.value or config.eval.engine,
      batch_size=_BATCH.value or config.eval.batch_size, flops_mode=_FLOPS.value)
  out = {"task": trained.task.name, "split": _SPLIT.value, **result}
  path = Path(_OUTPUT.value or Path(_WORKDIR.value) / f"eval_{_SPLIT.value}.json")
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=2))
  print(json.dumps({k: v for k, v in out.items() if k != "kept_tokens_per_layer"}, indent=2))
  print(f"wrote {path}")


if __name__ == "__main__":
  run_cli(lambda: app.run(main))
