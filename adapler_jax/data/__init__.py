"""Task data: registry, loading (hub or local files), tokenization and batching.

Typical use::

  ds = load_split("sst2", "dev", data_dir="data/sst2")
  tok = tokenize(ds, tokenizer, get_task("sst2").max_length)
  for batch in eval_batches(tok, batch_size=64):
    ...
"""

from adapler_jax.data.batching import (DEFAULT_BUCKETS, TRAIN_BUCKETS, bucket_lengths,
                                       eval_batches, num_train_steps, train_batches)
from adapler_jax.data.dataset import TextDataset, resplit, subset, subset_indices
from adapler_jax.data.demo import make_demo_task
from adapler_jax.data.eraser import load_eraser
from adapler_jax.data.loading import load_split
from adapler_jax.data.readers import load_file
from adapler_jax.data.squad import (SpanFeatures, SquadDataset, load_squad, span_features,
                                    split_by_article)
from adapler_jax.data.tasks import (TASKS, LocalFormat, TaskSpec, get_task, task_names,
                                    transfer_task)
from adapler_jax.data.tokenize import TokenizedDataset, tokenize, valid_mask
from adapler_jax.errors import DataError

__all__ = [
    "DEFAULT_BUCKETS", "DataError", "TRAIN_BUCKETS", "LocalFormat", "TASKS", "TaskSpec", "TextDataset",
    "TokenizedDataset", "bucket_lengths", "eval_batches", "get_task", "load_file",
    "load_eraser", "load_split", "load_squad", "make_demo_task", "num_train_steps", "resplit",
    "SpanFeatures", "span_features", "split_by_article", "SquadDataset", "subset", "subset_indices",
    "task_names", "tokenize", "train_batches", "transfer_task", "valid_mask",
]
