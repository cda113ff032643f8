"""mrpc: paper Tables 3 and 4 (max length 128, batch 32, 5 + 10 epochs, lambda = 10 * 3^epoch).

Run:
  python train.py --config configs/mrpc.py --workdir runs/mrpc --config.data.data_dir=PATH/TO/mrpc
Leave data_dir empty to download from the Hugging Face hub.

Paper (BERT-base, test): 87.6 F1 at 1.27x.
"""

from adapler_jax.pipeline import base_config


def get_config():
  c = base_config("mrpc", max_length=128)
  c.train.batch_size = 32
  c.train.epochs = 5
  c.train.learning_rate = 2e-05
  c.adapler.batch_size = 32
  c.adapler.epochs = 10
  c.adapler.gamma = 0.03
  c.adapler.phi = 0.05
  c.adapler.lambda_init = 10.0
  c.adapler.lambda_rate = 3.0
  c.data.test_split = "test"  # msr_paraphrase_test.txt locally.
  return c
