"""imdb: paper Tables 3 and 4 (max length 512, batch 16, 5 + 5 epochs, lambda = 10^(epoch + 1)).

Run:
  python train.py --config configs/imdb.py --workdir runs/imdb --config.data.data_dir=PATH/TO/imdb
Leave data_dir empty to download from the Hugging Face hub.

Paper (BERT-base, test): 91.7 accuracy at 3.21x.
"""

from adapler_jax.pipeline import base_config


def get_config():
  c = base_config("imdb", max_length=512)
  c.train.batch_size = 16
  c.train.epochs = 5
  c.train.learning_rate = 2e-05
  c.adapler.batch_size = 16
  c.adapler.epochs = 5
  c.adapler.gamma = 0.005
  c.adapler.phi = 0.0005
  c.adapler.lambda_init = 10.0
  c.adapler.lambda_rate = 10.0
  c.data.dev_split = "test"  # IMDB has no dev split: evaluate on test.
  return c
