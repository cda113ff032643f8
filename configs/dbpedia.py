"""dbpedia: paper Tables 3 and 4 (max length 128, batch 32, 3 + 3 epochs, lambda = 50^(epoch + 1)).

Run:
  python train.py --config configs/dbpedia.py --workdir runs/dbpedia --config.data.data_dir=PATH/TO/dbpedia
Leave data_dir empty to download from the Hugging Face hub.

Paper (BERT-base, test): 98.9 accuracy at 22.23x.
"""

from adapler_jax.pipeline import base_config


def get_config():
  c = base_config("dbpedia", max_length=128)
  c.train.batch_size = 32
  c.train.epochs = 3
  c.train.learning_rate = 2e-05
  c.adapler.batch_size = 32
  c.adapler.epochs = 3
  c.adapler.gamma = 0.1
  c.adapler.phi = 0.1
  c.adapler.lambda_init = 50.0
  c.adapler.lambda_rate = 50.0
  c.data.dev_split = "test"  # the hub has train/test only: dev = test
  return c
