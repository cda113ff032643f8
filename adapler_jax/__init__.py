"""adapler_jax: adaptive length reduction for BERT-style encoders in JAX/Flax."""
