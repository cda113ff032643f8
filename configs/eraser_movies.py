"""eraser_movies: ERASER movie reviews with human rationales (paper §5.3, Figure 5).

Reviews are cut into windows of at most max_length tokens that never split an evidence span
(`adapler_jax/data/eraser.py`); every window is one example with its review's label.
Full budget, like IMDB in paper Tables 3 and 4 (1,600 reviews = 3,491 windows):
  python train.py --config configs/eraser_movies.py --workdir runs/eraser_movies \
      --config.data.data_dir=data/eraser_movies
then the rationale agreement on the test reviews:
  python evaluate.py --workdir runs/eraser_movies --split test --rationales
`bench/rationales.py` runs both with a small CPU budget. The paper gives no AdapLeR accuracy
or speedup for this task: its Table 2 has BERT's 93.3 on the full input (and 3.7x inputs of
rationales or saliency), and its Figure 5 reports rationale agreement.
"""

from adapler_jax.pipeline import base_config


def get_config():
  c = base_config("eraser_movies", max_length=512)
  c.data.test_split = "test"
  c.train.batch_size = 16
  c.train.epochs = 5
  c.adapler.batch_size = 16
  c.adapler.epochs = 5
  c.adapler.gamma = 0.005
  c.adapler.phi = 0.0005
  c.adapler.lambda_init = 10.0
  c.adapler.lambda_rate = 10.0
  c.eval.batch_size = 16
  c.eval.engine = "bucketed"  # hundreds of distinct window lengths: batched real dropping.
  return c
