"""squad with the Length-Adaptive Transformer as its authors ran it: standard fine-tuning, then
LengthDrop with drop-and-restore ([CLS] is not forced to stay; dropped vectors come back at the
last layer for the span head). Where the defaults differ from the authors' code (forward KL
for the sandwich, padded query rows left out of the significance, AdamW eps 1e-6; each a
config field, docs/lat.md) and their features (questions are not cut to 64 tokens first:
the features follow Hugging Face's run_qa, which keeps the whole question), say so beside
results.

Run (see configs/squad.py for the re-split of dev by article):
  python train.py --config configs/squad_lat.py --workdir runs/squad_lat \
      --config.data.data_dir=PATH/TO/squad
  python evaluate.py --workdir runs/squad_lat --length-ratio 0.2

LAT paper (BERT-base, SQuAD 1.1 dev): F1 88.5 standard, 88.7 at 0.45x padded FLOPs.
"""

from configs import squad


def get_config():
  c = squad.get_config()
  c.method = "lat"
  c.lat.epochs = 5  # "another five epochs" from the best fine-tuned checkpoint.
  c.lat.batch_size = 32
  c.lat.learning_rate = 5e-05  # linear decay, no warmup, weight decay 0 (run_squad).
  c.lat.keep_cls = False
  return c
