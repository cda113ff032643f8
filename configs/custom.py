"""custom: your own CSV, TSV or JSON-lines files (docs/cli.md).

Run:
  python train.py --config configs/custom.py --workdir runs/mine \
      --config.data.train_file=PATH/train.csv --config.data.dev_file=PATH/dev.csv \
      --config.data.text_fields=text --config.data.label_field=label

CSV and TSV files need a header row naming the fields; JSON lines hold one object per line.
`data.text_fields` names one field, or two comma-separated for a sentence pair;
`data.label_names` (comma-separated) fixes the class order, else it is read from the train file.
"""

from adapler_jax.pipeline import base_config


def get_config():
  return base_config("custom", max_length=128)
