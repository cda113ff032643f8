"""Writes tests/golden/backbones.{json,npz}: HF PyTorch outputs (last hidden states, and
logits of the sequence classifiers) of the tiny seeded models of `tests/test_backbones.py`,
for its runs without torch.

The weights are not stored: the test rebuilds them from each case's key list and seed.
Needs torch and transformers. Run from the repository root:
python -m tests.golden.make_backbones
"""

import json
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from tests import test_backbones as cases


def main():
  spec, arrays = {}, {}
  for seed, name in enumerate(cases.CASES):
    with tempfile.TemporaryDirectory() as d:
      batch, outputs, shapes = cases.live_case(name, Path(d), seed)
      assert sorted(load_file(str(Path(d) / "model.safetensors"))) == sorted(shapes), name
      config = json.loads((Path(d) / "config.json").read_text())
    spec[name] = {"config": config, "seed": seed, "shapes": shapes}
    arrays.update({f"{name}/{k}": v for k, v in {**batch, **outputs}.items()})
  (cases.GOLDEN / "backbones.json").write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
  np.savez_compressed(cases.GOLDEN / "backbones.npz", **arrays)
  print(f"wrote {cases.GOLDEN / 'backbones.json'} and backbones.npz")


if __name__ == "__main__":
  main()
