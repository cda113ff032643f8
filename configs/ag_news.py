"""ag_news: paper Tables 3 and 4 (max length 128, batch 32, 5 + 5 epochs, lambda = 10^(epoch + 1)).

Run:
  python train.py --config configs/ag_news.py --workdir runs/ag_news --config.data.data_dir=PATH/TO/ag_news
Leave data_dir empty to download from the Hugging Face hub.

Paper (BERT-base, test): 92.5 accuracy at 17.1x.
"""

from adapler_jax.pipeline import base_config


def get_config():
  c = base_config("ag_news", max_length=128)
  c.train.batch_size = 32
  c.train.epochs = 5
  c.train.learning_rate = 2e-05
  c.adapler.batch_size = 32
  c.adapler.epochs = 5
  c.adapler.gamma = 0.1
  c.adapler.phi = 0.1
  c.adapler.lambda_init = 10.0
  c.adapler.lambda_rate = 10.0
  c.data.dev_split = "test"  # the hub has train/test only: dev = test
  return c
