"""sst2: paper Tables 3 and 4 (max length 64, batch 32, 5 + 5 epochs, lambda = 10^(epoch + 1)).

Run:
  python train.py --config configs/sst2.py --workdir runs/sst2 --config.data.data_dir=PATH/TO/sst2
Leave data_dir empty to download from the Hugging Face hub.

Paper (BERT-base, test): 92.3 accuracy at 1.49x FLOPs speedup.
"""

from adapler_jax.pipeline import base_config


def get_config():
  c = base_config("sst2", max_length=64)
  c.train.batch_size = 32
  c.train.epochs = 5
  c.train.learning_rate = 2e-05
  c.adapler.batch_size = 32
  c.adapler.epochs = 5
  c.adapler.gamma = 0.005
  c.adapler.phi = 0.0005
  c.adapler.lambda_init = 10.0
  c.adapler.lambda_rate = 10.0
  c.data.data_dir = ""  # e.g. data/sst2 (GLUE TSV)
  return c
