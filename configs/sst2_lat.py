"""sst2 with the Length-Adaptive Transformer: standard fine-tuning, then LengthDrop.

Run:
  python train.py --config configs/sst2_lat.py --workdir runs/sst2_lat \
      --config.data.data_dir=PATH/TO/sst2
  python evaluate.py --workdir runs/sst2_lat --length-ratio 0.2

LAT paper (BERT-base, 128 tokens, dev): 92.8 standard, 92.8 at 0.35x padded FLOPs.
Not the paper's setup: the first stage is configs/sst2.py's AdapLeR recipe (64 tokens, the
AdapLeR paper's length for SST-2; 5 epochs, weight decay 0.1, 6 % warmup; the LAT authors:
128 tokens, 3 epochs, no decay or warmup), so both methods start from one fine-tuned model.
At 64 tokens the smallest trained sub-model (lat.smallest_ratio 0.2) costs 0.55x the padded
MACs of a 6-layer MiniLM, so the paper's 0.35x is below it; pass
--config.data.max_length=128 --config.train.epochs=3 --config.train.weight_decay=0
--config.train.warmup_fraction=0 for the paper's first stage.
"""

from configs import sst2


def get_config():
  c = sst2.get_config()
  c.method = "lat"
  c.lat.epochs = 5  # the paper's "another five epochs"; lr 2e-5, no warmup, weight decay 0.
  return c
