"""Config discovery from the CLI (--print_config, --help, misspelt fields) and the
persistent compilation cache the CLIs turn on."""

import importlib.util
import os
import re
import subprocess
import sys
import time
import types

import jax
import ml_collections
import pytest
from jax.experimental.compilation_cache import compilation_cache

from adapler_jax import cli
from adapler_jax.errors import UserError
from adapler_jax.pipeline.config import HELP, apply_overrides, base_config, dotted
from tests.test_pipeline import ROOT

LINE = re.compile(r"^(\S+) = (.+?)\s+# (.+)$")


def train_py(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)


def config_files():
  return sorted((ROOT / "configs").glob("*.py"))


def load(path) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, str(ROOT))  # configs/demo_lat.py imports configs.demo.
  try:
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(str(ROOT))
  return module.get_config()


def test_every_field_has_help():
  fields = set(dotted(base_config("demo", 48)))
  sections = {k.rpartition(".")[0] for k in fields} - {""}
  assert set(HELP) == fields | sections  # no field without help, no help without a field.
  assert all(text.strip() for text in HELP.values())
  for path in config_files():
    assert set(dotted(load(path))) <= fields, f"{path.name} adds fields without help"


def test_fields_named_in_messages_exist():
  """Every `--config.<field>` a message or docstring tells the user to pass is a field."""
  fields = set(dotted(base_config("demo", 48)))
  sources = [*(ROOT / "adapler_jax").rglob("*.py"), ROOT / "train.py", ROOT / "evaluate.py"]
  named = {m.rstrip(".") for p in sources
           for m in re.findall(r"--config\.([\w.{}]+)", p.read_text()) if "{" not in m}
  assert {"data.text_fields", "data.label_field", "data.label_names"} <= named  # readers' hints.
  assert named <= fields, named - fields


def test_print_config_lists_every_field_with_value_default_and_help(tmp_path):
  proc = train_py("--config", "configs/sst2.py", "--print_config", "--config.train.epochs=3",
                  "--config.data.label_names=neg,pos")
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert lines[0] == "# configs/sst2.py with overrides; set a field with --config.<field>=VALUE"
  rows = {m[1]: (m[2], m[3]) for m in map(LINE.match, lines) if m}
  assert set(rows) == set(dotted(load(ROOT / "configs" / "sst2.py")))
  assert rows["train.epochs"] == ("3", f"{HELP['train.epochs']} [default 5]")
  assert rows["data.label_names"] == ("'neg,pos'", f"{HELP['data.label_names']} [default '']")
  assert rows["adapler.phi"] == ("0.0005", HELP["adapler.phi"])  # the default: no note.
  assert "# train: " + HELP["train"] in lines
  assert all(l.startswith("#") or not l or LINE.match(l) for l in lines[1:])
  assert not list(tmp_path.iterdir())
  # "As it would run": a value a run refuses is refused here too (it printed, exit 0).
  proc = train_py("--config", "configs/sst2.py", "--print_config", "--config.train.batch_size=-4")
  assert proc.returncode == 2 and proc.stderr.strip() == (
      "error: config train.batch_size is -4; it must be at least 1 (e.g. "
      "--config.train.batch_size=32)") and not proc.stdout


def test_help_names_overrides_and_print_config():
  proc = train_py("--help")
  assert proc.returncode == 0  # asked-for help is not a failure (absl's own exit is 1).
  assert "--config.<field>=VALUE" in proc.stdout and "--print_config" in proc.stdout


def test_flag_mistakes_are_one_line_with_the_fix():
  proc = train_py("--config", "configs/demo.py", "--workdir", "unused", "--epochs=1")
  assert proc.returncode == 2 and proc.stderr.strip() == (
      "error: unknown flag --epochs; config fields are set as --config.<field>: "
      "--config.adapler.epochs, --config.lat.epochs, --config.train.epochs")
  proc = train_py("--config", "configs/demo.py", "--workdir", "unused", "--no_such_flag=1")
  assert proc.returncode == 2 and proc.stderr.strip() == (
      "error: unknown flag --no_such_flag; config fields are set as --config.<field> (list "
      "them with --print_config)")
  assert not (ROOT / "unused").exists()
  # A word outside a flag (`finetune` meant as --phase finetune) ran every phase silently.
  proc = train_py("--config", "configs/demo.py", "--workdir", "unused", "finetune")
  assert proc.returncode == 2 and proc.stderr.strip() == (
      "error: unexpected argument 'finetune'; give every value with its flag, as "
      "--name=value (see --help)")
  assert not (ROOT / "unused").exists()
  assert cli.flag_error("flag --workdir=None: Flag --workdir must have a value other than "
                        "None. flag --output=None: Flag --output must have a value other "
                        "than None.") == "--workdir and --output are missing; pass them (see --help)"


def test_a_value_of_the_wrong_type_is_one_line_naming_the_type():
  """As the bench scripts' KEY=VALUE overrides word it, with the config file's value as the
  example; nothing is created."""
  for override, message in (
      ("train.epochs=abc", "'abc' is not an int; e.g. 1"),
      ("lat.keep_cls=maybe", "'maybe' is not true or false; e.g. true")):
    proc = train_py("--config", "configs/demo.py", "--workdir", "unused", f"--config.{override}")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: override '--config.{override}': {message}"), proc.stderr[-2000:]
  assert not (ROOT / "unused").exists()
  assert cli.flag_error("flag --config.train.learning_rate=x: could not convert string to "
                        "float: 'x'", str(ROOT / "configs" / "demo.py")) == (
      "override '--config.train.learning_rate=x': 'x' is not a float; e.g. 5e-05")


def test_misspelt_field_is_one_line_with_a_hint():
  proc = train_py("--config", "configs/demo.py", "--print_config", "--config.trian.epochs=1")
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert lines[0] == ("error: override '--config.trian.epochs=1': the config has no field "
                      "'trian.epochs' (did you mean 'train.epochs'?); write KEY=VALUE with a "
                      "dotted key such as adapler.phi=1e-3")


def test_key_value_overrides_take_each_field_type():
  """The bench scripts' KEY=VALUE overrides: a tuple as a comma list, booleans strictly,
  numbers as their field's type; anything else one line."""
  config = apply_overrides(base_config("demo", 64), [
      "search.eta_multipliers=0, 1,2.5", "lat.keep_cls=false", "train.epochs=1e1",
      "adapler.phi=2e-3"])
  assert config.search.eta_multipliers == (0.0, 1.0, 2.5)
  assert (config.lat.keep_cls, config.train.epochs, config.adapler.phi) == (False, 10, 2e-3)
  for item, message in (
      ("lat.keep_cls=flase", "'flase' is not true or false; e.g. false"),
      ("train.epochs=1.5", "'1.5' is not an int; e.g. 10"),
      ("adapler.phi=x", "'x' is not a float; e.g. 0.002"),
      ("search.eta_multipliers=1,a", "'a' is not a float; e.g. 0.0")):
    with pytest.raises(UserError) as err:
      apply_overrides(config, [item])
    assert str(err.value) == f"override {item!r}: {message}"


def test_workdir_is_required_to_train():
  proc = train_py("--config", "configs/demo.py")
  assert proc.returncode == 2
  assert proc.stderr.strip() == ("error: --workdir is missing; pass a directory for the run's "
                                 "checkpoints, e.g. --workdir runs/demo")


def test_cache_folder(monkeypatch, tmp_path):
  monkeypatch.delenv(cli.CACHE_ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert cli.compilation_cache_dir() == tmp_path / "xdg" / "adapler-jax" / "jax"
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert cli.compilation_cache_dir() == tmp_path / "home" / ".cache" / "adapler-jax" / "jax"
  monkeypatch.setenv(cli.CACHE_ENV, str(tmp_path / "mine"))
  assert cli.compilation_cache_dir() == tmp_path / "mine"
  monkeypatch.setenv(cli.CACHE_ENV, "")
  assert cli.compilation_cache_dir() is None


@pytest.fixture
def jax_cache_options():
  """The JAX options `enable_compilation_cache` sets, restored afterwards."""
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes", "jax_compilation_cache_max_size")
  saved = {k: getattr(jax.config, k) for k in names}
  jax.config.update("jax_compilation_cache_dir", None)
  yield
  for k, v in saved.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()


def test_enable_compilation_cache(monkeypatch, tmp_path, jax_cache_options):
  monkeypatch.setenv(cli.CACHE_ENV, str(tmp_path / "cache"))
  off = base_config("demo", 48)
  off.compilation_cache = False
  assert cli.enable_compilation_cache(off) is None
  assert jax.config.jax_compilation_cache_dir is None
  monkeypatch.setenv(cli.CACHE_ENV, "")
  assert cli.enable_compilation_cache(base_config("demo", 48)) is None
  monkeypatch.setenv(cli.CACHE_ENV, str(tmp_path / "cache"))
  assert cli.enable_compilation_cache(base_config("demo", 48)) == str(tmp_path / "cache")
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
  assert jax.config.jax_persistent_cache_min_entry_size_bytes == -1
  assert jax.config.jax_compilation_cache_max_size == -1  # no scan on every write ...
  # ... the folder is trimmed when a run turns the cache on instead.
  jax.config.update("jax_compilation_cache_dir", None)
  monkeypatch.setattr(cli, "CACHE_MAX_BYTES", 150)
  _programs(tmp_path / "cache", {"old": 2, "new": 1})
  assert cli.enable_compilation_cache(None) == str(tmp_path / "cache")
  assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["new-atime", "new-cache"]
  # A folder chosen through JAX itself (JAX_COMPILATION_CACHE_DIR) is kept.
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax_own"))
  assert cli.enable_compilation_cache(None) == str(tmp_path / "jax_own")


def _programs(folder, last_use: dict[str, int]) -> None:
  """100-byte cache entries (and JAX's access-time files), last used `last_use` days ago."""
  folder.mkdir(exist_ok=True)
  for key, days in last_use.items():
    for suffix in (cli.CACHE_SUFFIX, cli.ATIME_SUFFIX):
      (folder / f"{key}{suffix}").write_bytes(b"x" * (100 if suffix == cli.CACHE_SUFFIX else 8))
      os.utime(folder / f"{key}{suffix}", (time.time() - days * 86400,) * 2)


def test_prune_compilation_cache_deletes_the_least_recently_used(tmp_path):
  _programs(tmp_path, {"a": 5, "b": 1, "c": 3, "d": 2})
  (tmp_path / "unrelated.txt").write_text("kept")
  assert cli.prune_compilation_cache(tmp_path, 400) == 0  # 4 x 100 bytes fit.
  assert cli.prune_compilation_cache(tmp_path, 250) == 2  # the two oldest go, a then c.
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "b-atime", "b-cache", "d-atime", "d-cache", "unrelated.txt"]
  os.utime(tmp_path / "d-cache", None)  # read (or rewritten) just now: the newest.
  assert cli.prune_compilation_cache(tmp_path, 199) == 1
  assert sorted(p.name for p in tmp_path.iterdir()) == ["d-atime", "d-cache", "unrelated.txt"]
  assert cli.prune_compilation_cache(tmp_path / "absent", 0) == 0


def test_missing_extra_is_one_line(monkeypatch):
  from adapler_jax import extras  # pylint: disable=g-import-not-at-top
  from adapler_jax.data import get_task, hub  # pylint: disable=g-import-not-at-top
  from adapler_jax.errors import MissingExtraError  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed.
  monkeypatch.setitem(sys.modules, "datasets", None)
  with pytest.raises(MissingExtraError) as err:
    extras.pyplot()
  assert str(err.value) == ("drawing figures needs the matplotlib package (adapler-jax's "
                            "'plots' extra); install it with pip install matplotlib")
  with pytest.raises(MissingExtraError) as err:
    hub.load_from_hub(get_task("sst2"), "dev")
  assert str(err.value) == ("downloading sst2 from the Hugging Face hub needs the datasets "
                            "package (adapler-jax's 'hub' extra); install it with pip install "
                            "datasets or pass a local folder with --config.data.data_dir")


@pytest.mark.parametrize("source, reason", [
    ("def get_config(:\n", r"SyntaxError: invalid syntax \(.*\)"),
    ("x = 1\n", "AttributeError: module '_config_file' has no attribute 'get_config'"),
    ("def get_config():\n  raise KeyError('boom')\n", "KeyError: 'boom'"),
])
def test_a_config_file_that_cannot_be_loaded_is_one_line(tmp_path, source, reason):
  path = tmp_path / "mine.py"
  path.write_text(source)
  proc = train_py("--config", str(path), "--workdir", str(tmp_path / "run"),
                  "--config.train.epochs=1")
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert re.fullmatch(re.escape(f"error: config file {path} cannot be loaded (") + reason +
                      re.escape("); pass --config configs/<task>.py, or a copy of one"), lines[0])
  assert not (tmp_path / "run").exists()


def test_a_data_file_passed_as_config_is_named_so(tmp_path):
  path = tmp_path / "train.csv"
  path.write_text("text,label\n")
  with pytest.raises(UserError, match=re.escape(
      f"config file {path} is not a Python file (.py); pass --config configs/<task>.py, or a "
      "copy of one; data files go in --config.data.train_file (dev_file, test_file)")):
    cli._load_config(str(path))


def test_a_config_file_returning_a_plain_dict_is_one_line(tmp_path):
  path = tmp_path / "mine.py"
  path.write_text("def get_config():\n  return {'task': 'demo'}\n")
  proc = train_py("--config", str(path), "--workdir", str(tmp_path / "run"))
  assert proc.returncode == 2 and proc.stderr.strip() == (
      f"error: config file {path}: get_config() returns dict, not the ConfigDict of "
      "pipeline.base_config(task, max_length); build it as configs/<task>.py do")


def test_the_clis_silence_transformers_advice_about_pytorch(monkeypatch):
  """Without PyTorch, importing transformers advises installing it on every command; the
  CLIs never load PyTorch models, so they turn that advice off (a user's choice stays)."""
  monkeypatch.delenv("TRANSFORMERS_NO_ADVISORY_WARNINGS", raising=False)
  seen = []
  record = lambda: seen.append(os.environ.get("TRANSFORMERS_NO_ADVISORY_WARNINGS"))
  cli.run_cli(record)
  monkeypatch.setenv("TRANSFORMERS_NO_ADVISORY_WARNINGS", "")
  cli.run_cli(record)
  assert seen == ["1", ""]


def bench_module(name: str, monkeypatch):
  """bench/<name>.py imported as a module (the bench folder on sys.path, as it runs)."""
  monkeypatch.syspath_prepend(str(ROOT / "bench"))
  spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look it up there.
  spec.loader.exec_module(module)
  return module


def test_bench_inference_runs_a_lat_run_at_its_own_length_base_and_floor(monkeypatch):
  """bench/inference.py times a LAT run's frontier configs on the length base its search
  scored them on, and its ratio specs with the run's `lat.min_length`."""
  bench = bench_module("inference", monkeypatch)
  assert bench.lat_config("padded:0.5", 16, 4, min_length=3) == ("padded", (8, 4, 3, 3))
  assert bench.lat_config("actual:9-5", 16, 2) == ("actual", (9, 5))
  monkeypatch.setattr(bench, "frontier_points",
                      lambda workdir, budgets: [{"config": [12, 7], "budget": 0.5}])
  setup = bench.Setup("sst2", None, None, None, None, "", lat_base="actual")
  args = types.SimpleNamespace(frontier_budgets=[0.5])
  assert bench.with_frontier(setup, "runs/x", args).lat_points == ["actual:12-7"]


def test_bench_predict_takes_the_throughput_ratio_per_repeat(monkeypatch):
  """bench/predict.py: predict over engine per repeat, its median and spread (the ratio of
  the two medians read 96.0 % on these published repeats; per repeat, 94.9 %)."""
  bench = bench_module("predict", monkeypatch)
  engine = [9.56888831499964, 10.056701170997258, 10.3653515900005, 10.174356438001269,
            10.254018813000584]
  predict = [9.846743204001541, 10.59655822300192, 11.29722390200186, 12.505283711998345,
             9.93486843899882]
  out = bench.over_engine({"engine.run": engine, "Predictor.predict": predict})
  assert out["predict_over_engine"] == 0.949
  rounds = out["predict_over_engine_rounds"]
  assert (rounds["min"], rounds["max"], rounds["stable"]) == (0.814, 1.032, False)


def test_bench_lat_tradeoff_sweeps_down_to_the_runs_smallest_sub_model(monkeypatch):
  """Its default ratios end at the run's lat.smallest_ratio (they stopped at 0.2, so a run
  trained at 0.25 never reached its own floor without a hand-typed --ratios)."""
  bench = bench_module("lat_tradeoff", monkeypatch)
  assert bench.default_ratios(0.2) == tuple(round(0.02 * i, 2) for i in range(11))
  assert bench.default_ratios(0.25)[-3:] == (0.22, 0.24, 0.25)
  assert bench.default_ratios(0.05) == (0.0, 0.02, 0.04, 0.05)


def test_version_is_the_installed_package_s():
  """`adapler_jax.__version__` and every command's `--version` (exit 0, before the flags a
  command requires) name the installed distribution's version."""
  import adapler_jax  # pylint: disable=g-import-not-at-top
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  installed = metadata.version("adapler-jax")
  assert adapler_jax.__version__ == installed
  for command, flag in ((["train.py"], "--version"), (["evaluate.py"], "--version=true"),
                        (["-m", "adapler_jax.predict"], "-version"),
                        (["-m", "adapler_jax.export"], "--version")):
    proc = subprocess.run([sys.executable, *command, flag], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"adapler-jax {installed}\n", "")


def test_the_command_modules_import_together_and_leave_their_flag_names_free():
  """Importing `adapler_jax.export` and `adapler_jax.predict` defines no flag: both have an
  --output, and so may the importer's own absl program. Each command defines its flags when
  it runs."""
  program = ("import adapler_jax.export, adapler_jax.predict\n"
             "from absl import flags\n"
             "flags.DEFINE_string('output', 'mine', '')\n"
             "flags.DEFINE_string('model', None, '')\n"
             "flags.FLAGS(['prog', '--model=m'])\n"
             "print(flags.FLAGS.output, flags.FLAGS.model)\n")
  proc = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
  assert (proc.returncode, proc.stdout) == (0, "mine m\n"), proc.stderr[-2000:]
  proc = subprocess.run([sys.executable, "-m", "adapler_jax.predict", "--help"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and "--model: An export directory" in proc.stdout, proc.stderr
