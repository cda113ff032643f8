"""mnli: paper Tables 3 and 4 (max length 128, batch 32, 3 + 3 epochs, lambda = 50^(epoch + 1)).

Run:
  python train.py --config configs/mnli.py --workdir runs/mnli --config.data.data_dir=PATH/TO/mnli
Leave data_dir empty to download from the Hugging Face hub.

Paper (BERT-base, test, m/mm average): 82.9 accuracy at 1.42x.
"""

from adapler_jax.pipeline import base_config


def get_config():
  c = base_config("mnli", max_length=128)
  c.train.batch_size = 32
  c.train.epochs = 3
  c.train.learning_rate = 2e-05
  c.adapler.batch_size = 32
  c.adapler.epochs = 3
  c.adapler.gamma = 0.005
  c.adapler.phi = 0.0005
  c.adapler.lambda_init = 50.0
  c.adapler.lambda_rate = 50.0
  c.data.dev_split = "dev_matched"  # evaluate dev_mismatched with --config.eval.split=test
  c.data.test_split = "dev_mismatched"
  return c
