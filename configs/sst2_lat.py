"""sst2 with the Length-Adaptive Transformer: standard fine-tuning, then LengthDrop.

Run:
  python train.py --config configs/sst2_lat.py --workdir runs/sst2_lat \
      --config.data.data_dir=PATH/TO/sst2
  python evaluate.py --workdir runs/sst2_lat --length-ratio 0.2

LAT paper (BERT-base, 128 tokens, dev): 92.8 standard, 92.8 at 0.35x padded FLOPs.
"""

from configs import sst2


def get_config():
  c = sst2.get_config()
  c.method = "lat"
  c.lat.epochs = 5  # the paper's "another five epochs"; lr 2e-5, no warmup, weight decay 0.
  return c
