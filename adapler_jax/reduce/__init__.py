"""Token-reduction policies over the encoder's one walk (`adapler_jax.models.walk`).

* `adapler`: AdapLeR, contribution predictor scores against the cutoff eta / n; soft removal
  (Eq. 4) for training, hard removal for inference, one keep rule.
* `significance`: PoWER-BERT / Length-Adaptive Transformer selection, the attention each
  token receives, top-l of a length configuration; a masked path (fixed shapes, traced
  lengths) for training and search, a gather path (real shrinking) for inference.
* `lengths`: length configurations, the LengthDrop sampler and LayerDrop.
"""
