"""Writes tests/golden/minilm_hidden.npz: HF PyTorch BertModel outputs on the embedded MiniLM.

Needs torch (`pip install torch==2.13.0`); the tests that read the file, and `SENTENCES`, do
not, so torch is imported in `main` alone.
Run from the repository root: python tests/golden/make_bert_golden.py
"""

from pathlib import Path

import numpy as np

from adapler_jax.weights import embedded_dir

SENTENCES = [
    "the film is a gentle, funny and quietly devastating portrait of a family .",
    "A stunning debut; I have not stopped thinking about it since Tuesday!",
    "Stocks fell sharply after the central bank raised interest rates again.",
    "short.",
]
PAIR = ("Who founded the company?", "The company was founded in 1998 by two students.")


def main():
  import torch  # pylint: disable=g-import-not-at-top
  from transformers import AutoTokenizer, BertModel  # pylint: disable=g-import-not-at-top

  directory = embedded_dir("minilm")
  tokenizer = AutoTokenizer.from_pretrained(str(directory))
  model = BertModel.from_pretrained(str(directory)).eval()
  singles = tokenizer(SENTENCES, padding="max_length", max_length=24, return_tensors="np")
  pair = tokenizer(*PAIR, padding="max_length", max_length=24, return_tensors="np")
  batch = {k: np.concatenate([singles[k], pair[k]]) for k in singles}
  with torch.no_grad():
    out = model(**{k: torch.tensor(v) for k, v in batch.items()})
  path = Path(__file__).with_name("minilm_hidden.npz")
  np.savez_compressed(path, last_hidden_state=out.last_hidden_state.numpy(),
                      torch_version=torch.__version__, **batch)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
