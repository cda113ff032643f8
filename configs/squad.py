"""squad: span QA on SQuAD 1.1 with AdapLeR (new: the paper leaves token-level tasks as future
work). Saliency of the gold start + end logits, CP-based hard removal with drop-and-restore,
evaluation with the official EM / F1. Fine-tuning as the LAT authors' run_squad (384 tokens,
stride 128, 3 epochs, lr 5e-5, batch 32, no warmup, no weight decay). The AdapLeR phase keeps
that learning rate and weight decay (the paper's classification tasks use 3e-5 and 0.1) with
AdapLeR's 6 % warmup, gamma and phi of SST-2 / IMDB / MNLI, and the paper's schedule for
three-epoch tasks, lambda = 50^(epoch + 1), so the last epoch passes 1e5 and the soft removal
reaches hard removal. The CPU runs in the project's SQuAD docs override it with
--config.adapler.lambda_init=100 (lambda 100, 1,000, 10,000).

Run (the official train and dev files):
  python train.py --config configs/squad.py --workdir runs/squad \
      --config.data.data_dir=PATH/TO/squad
Leave data_dir empty to download rajpurkar/squad from the Hugging Face hub.

With dev v1.1 alone, re-split it by article (38 train, 8 evaluated, the 2 left for a search):
  python train.py --config configs/squad.py --workdir runs/squad \
      --config.data.data_dir=PATH/TO/squad --config.data.resplit_source=dev \
      --config.data.resplit_train=38 --config.data.resplit_test=8
Results on that re-split are not comparable to published SQuAD dev numbers.
"""

from adapler_jax.pipeline import base_config


def get_config():
  c = base_config("squad", max_length=384)
  c.data.doc_stride = 128
  c.train.batch_size = 32
  c.train.epochs = 3
  c.train.learning_rate = 5e-05
  c.train.weight_decay = 0.0
  c.train.warmup_fraction = 0.0
  c.saliency.batch_size = 32
  c.adapler.batch_size = 32
  c.adapler.epochs = 3
  c.adapler.learning_rate = 5e-05
  c.adapler.weight_decay = 0.0
  c.adapler.gamma = 0.005
  c.adapler.phi = 0.0005
  c.adapler.lambda_init = 50.0
  c.adapler.lambda_rate = 50.0
  c.eval.batch_size = 32
  c.search.held_out = 100000  # every question of the articles held out for the search.
  c.search.batch_size = 32
  c.data.data_dir = ""  # e.g. a folder with train-v1.1.json and dev-v1.1.json (.gz allowed)
  return c
