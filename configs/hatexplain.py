"""hatexplain: paper Tables 3 and 4 (max length 72, batch 32, 5 + 5 epochs, lambda = 50^(epoch + 1)).

Run:
  python train.py --config configs/hatexplain.py --workdir runs/hatexplain --config.data.data_dir=PATH/TO/hatexplain
Leave data_dir empty to download from the Hugging Face hub.

Paper (BERT-base, test): 68.6 accuracy at 4.73x.
"""

from adapler_jax.pipeline import base_config


def get_config():
  c = base_config("hatexplain", max_length=72)
  c.data.test_split = "test"  # the paper reports its labelled test split (1,924 posts).
  c.train.batch_size = 32
  c.train.epochs = 5
  c.train.learning_rate = 3e-05
  c.adapler.batch_size = 32
  c.adapler.epochs = 5
  c.adapler.gamma = 0.05
  c.adapler.phi = 0.02
  c.adapler.lambda_init = 50.0
  c.adapler.lambda_rate = 50.0
  return c
