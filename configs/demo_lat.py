"""demo with the Length-Adaptive Transformer (a main job: every LAT phase in minutes).

Run:
  python train.py --config configs/demo_lat.py --workdir runs/demo_lat

Fine-tunes MiniLM on the keyword task, trains it with LengthDrop and evaluates the full
model and the smallest sub-model (ratio 0.2 per layer) with real dropping.
"""

from configs import demo


def get_config():
  c = demo.get_config()
  c.method = "lat"
  c.lat.epochs = 1
  c.lat.learning_rate = 5e-5
  return c
