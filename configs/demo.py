"""demo: the generated keyword-topic task on the embedded MiniLM backbone (the main job).

Run:
  python train.py --config configs/demo.py --workdir runs/demo

Every phase and the evaluation run in a few minutes on 2 CPU cores. Labels are set by 1-3
planted keywords among random filler words, so a good model keeps little more than the
keywords: expect ~100% accuracy for both models and a large FLOPs speedup.
"""

from adapler_jax.pipeline import base_config


def get_config():
  c = base_config("demo", max_length=48)
  c.data.train_subset = 1024
  c.data.dev_subset = 256
  c.train.epochs = 1
  c.train.eval_every_steps = 8  # several evaluated checkpoints to average saliency over.
  c.train.learning_rate = 5e-5
  c.train.log_every_steps = 8
  c.adapler.epochs = 3
  c.adapler.learning_rate = 5e-5
  # 96 AdapLeR steps instead of the paper's thousands: the fresh predictors and the
  # eta/theta group need larger learning rates to move as far.
  c.adapler.predictor_learning_rate = 2e-3
  c.adapler.speed_learning_rate = 1e-2
  c.adapler.gamma = 0.1
  c.adapler.phi = 0.1
  c.adapler.lambda_init = 10.0
  c.adapler.lambda_rate = 100.0  # 10, 1e3, 1e5: reaches hard removal in 3 epochs.
  # --phase search: 4 generations of 12 children instead of the LAT authors' 30 of 60
  # (about 1.5 h here), for a frontier in minutes.
  c.search.iterations = 4
  c.search.mutations = c.search.crossovers = 6
  return c
