"""The bench scripts (rationales, trade-off, inference) and evaluate.py options, end to end
on a tiny demo run."""

import importlib.util
import json
import os
import shutil
import re
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from adapler_jax.data import DEFAULT_BUCKETS, DataError, bucket_lengths
from tests.test_pipeline import tiny_backbone  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # trains a tiny run: ~1-2 min on 2 CPU cores.
TINY_SETTINGS = (  # shorter than `tests.test_pipeline.tiny_config`, on configs/demo.py.
    "data.max_length=16", "data.train_subset=64", "data.dev_subset=24", "train.epochs=1",
    "train.batch_size=16", "train.learning_rate=1e-3", "train.eval_every_steps=2",
    "saliency.batch_size=32", "saliency.num_checkpoints=2", "adapler.epochs=1",
    "adapler.batch_size=16", "eval.batch_size=8", "eval.engine=bucketed")


def _script(name: str):
  spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses resolve their module through sys.modules.
  spec.loader.exec_module(module)
  return module


def _sets(*items):
  return [a for item in items for a in ("--set", item)]


@pytest.fixture(scope="module")
def run(tiny_backbone, tmp_path_factory):  # noqa: F811
  """A finished tiny demo run made by bench/rationales.py (train + rationale evaluation)."""
  root = tmp_path_factory.mktemp("scripts")
  out = root / "fig5"
  result = _script("rationales").main([
      "--workdir", str(root / "run"), "--config", str(ROOT / "configs" / "demo.py"), "--full",
      "--split", "dev", "--out", str(out),
      *_sets(f"backbone={tiny_backbone}", *TINY_SETTINGS)])
  return root, result


def test_bench_rationales_trains_and_writes_figure5(run):
  root, result = run
  on_disk = json.loads((root / "fig5.json").read_text())
  assert on_disk["methods"].keys() == {"CP", "Attention", "Rollout", "Saliency"}
  assert all(len(m["map"]) == 2 and len(m["fpr"]) == 2 for m in on_disk["methods"].values())
  assert on_disk["windows"] == 24 and on_disk["train_windows"] == 64
  assert len(result["lowest_fpr_method_per_layer"]) == 2
  assert (root / "fig5.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_explain_and_rationales_options(run):
  root, _ = run
  workdir = root / "run"
  cli = [sys.executable, str(ROOT / "evaluate.py"), "--workdir", str(workdir)]
  done = subprocess.run(cli + ["--explain", "the pizza was cold"], capture_output=True,
                        text=True, check=True)
  assert "kept tokens per layer" in done.stdout
  assert (workdir / "explain.html").exists() and (workdir / "explain.png").exists()
  done = subprocess.run(cli + ["--rationales", "--split", "dev"], capture_output=True, text=True,
                        check=True)
  assert "Saliency FPR" in done.stdout
  report = json.loads((workdir / "rationales_dev.json").read_text())
  assert report["task"] == "demo" and (workdir / "rationales_dev.png").exists()
  assert not (workdir / "eval_dev.json").exists()  # the default evaluation did not run.


def test_tradeoff_phi_sweep_eta_sweep_and_plot_only(run):
  from adapler_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  root, _ = run
  tradeoff = _script("tradeoff")
  base = root / "run"
  finetuned = sorted(p.name for p in (base / "finetune").iterdir())
  tradeoff.main(["--workdir", str(base), "--phis", "0.05", "--set", "adapler.epochs=1",
                 "--out", str(root / "phi")])
  sibling = root / "run_phi0.05"
  assert (sibling / "finetune").is_symlink() and (sibling / "saliency.npz").is_symlink()
  assert json.loads((sibling / "config.json").read_text())["adapler"]["phi"] == 0.05
  points = json.loads((root / "phi.json").read_text())
  assert {p["phi"] for p in points["points"]} == {0.1, 0.05}  # the base run and its sibling.
  assert points["backbone"]["flops_speedup"] == 1.0 and (root / "phi.png").exists()
  assert sorted(p.name for p in (base / "finetune").iterdir()) == finetuned  # untouched.
  tradeoff.main(["--from-workdirs", f"{base},{sibling}", "--out", str(root / "plot")])
  assert json.loads((root / "plot.json").read_text())["points"] == points["points"]
  # The finished sibling is reused for the same recipe, refused for another one.
  tradeoff.main(["--workdir", str(base), "--phis", "0.05", "--set", "adapler.epochs=1",
                 "--out", str(root / "phi_again")])
  with pytest.raises(UserError, match=re.escape(
      f"{sibling} was trained with other settings (adapler.epochs 1, not 3)")):
    tradeoff.main(["--workdir", str(base), "--phis", "0.05", "--set", "adapler.epochs=3",
                   "--out", str(root / "phi2")])
  tradeoff.main(["--workdir", str(base), "--eta-multipliers", "0.5,2", "--out",
                 str(root / "eta")])
  eta = json.loads((root / "eta.json").read_text())
  assert sorted(p["eta_multiplier"] for p in eta["points"]) == [0.5, 2.0]
  speedups = [p["flops_speedup"] for p in eta["points"]]
  assert speedups == sorted(speedups) and (root / "eta.png").exists()


def test_bench_batch_steps_on_a_trained_run(run):
  """Per-batch minima for the full model and two AdapLeR engines: one row each, the full
  model the unit of speed."""
  root, _ = run
  out = root / "batch_steps.json"
  _script("batch_steps").main(["--workdir", str(root / "run"), "--task", "demo",
                               "--eta-scales", "0,1", "--passes", "2", "--max-examples", "6",
                               "--out", str(out)])
  rows = json.loads(out.read_text())
  assert [r["system"] for r in rows] == ["ours-full", "ours-adapler eta x0",
                                         "ours-adapler eta x1"]
  assert rows[0]["speed_over_full"] == 1.0
  for r in rows:
    assert r["examples"] == 6 and r["step_ms_per_example"] > 0 and r["speed_over_full"] > 0
    assert r["versions"]["jax"] == jax.__version__  # what measured it goes with it.


def test_bench_inference_on_a_trained_run(run):
  root, _ = run
  inference = _script("inference")
  out = root / "inference.json"
  systems = "ours-full,ours-adapler" + (",hf-pytorch" if _has_torch() else "")
  inference.main(["--workdir", str(root / "run"), "--task", "demo", "--batch-sizes", "1,4",
                  "--max-examples", "12", "--systems", systems, "--out", str(out),
                  "--repeats", "2", "--min-seconds", "0", "--retries", "0", "--coarse-grids",
                  "--grid-widths", "2,6,10"])
  rows = json.loads(out.read_text())
  names = systems.replace(
      "ours-adapler", "ours-adapler,ours-adapler coarse,ours-adapler alt-grids").split(",")
  assert [(r["system"], r["batch_size"]) for r in rows] == [(s, b) for b in (1, 4) for s in names]
  widths = len(bucket_lengths(16, DEFAULT_BUCKETS))  # the run's max_length is 16.
  for b in range(2):  # batches <= 4: the default engine on fine grids.
    fine, coarse, alt = rows[b * len(names) + 1:b * len(names) + 4]
    assert fine["grid_widths"] == sorted({2, 4, 12, *bucket_lengths(16, DEFAULT_BUCKETS)})
    assert coarse["grid_widths"] == list(bucket_lengths(16, DEFAULT_BUCKETS))
    assert alt["grid_widths"] == sorted({2, 6, 10, *bucket_lengths(16, DEFAULT_BUCKETS)})
    assert fine["kept_tokens_per_layer"] == coarse["kept_tokens_per_layer"]
    assert alt["kept_tokens_per_layer"] == coarse["kept_tokens_per_layer"]
    assert fine["kept_token_fraction"] == coarse["kept_token_fraction"] <= 1.0
    kept = fine["kept_tokens_per_layer"]  # means over examples, rounded.
    assert abs(fine["kept_token_fraction"] - sum(kept) / (len(kept) * fine["mean_length"])) < 0.01
    assert sum(fine["slots_per_layer"]) <= sum(coarse["slots_per_layer"])
  for r in rows:
    assert r["examples"] == 12 and r["task"] == "demo"
    assert r["versions"]["jax"] == jax.__version__
    if r["system"] == "ours-full":  # restored params, one batch size per engine: at
      # batches <= 4 on the fine grids too, as the AdapLeR engine's layers.
      assert r["grid_widths"] == rows[1]["grid_widths"]
      assert r["kept_token_fraction"] == 1.0
      assert 1 <= r["compiled_shapes"] <= r["shape_bound"] == len(r["grid_widths"])
    if r["system"] == "ours-adapler":  # (batch, batch // 2, batch // 4) rows x widths,
      kernel_sets = 2 if jax.default_backend() == "cpu" else 1  # x dot-kernel sets on CPU.
      assert (1 <= r["compiled_shapes"] <= r["shape_bound"]
              == widths * min(3, r["batch_size"]) * kernel_sets)
    if not r["system"].startswith("ours-adapler"):
      assert r["flops_speedup"] == 1.0 and r["agreement_with_full"] == 1.0
  assert {"latency_p50_ms", "latency_p95_ms"} <= rows[0].keys()
  assert all(r["max_abs_logit_diff_vs_ours_full"] < 1e-4
             for r in rows if r["system"] == "hf-pytorch")
  with pytest.raises(DataError, match="pair sst2 with a run trained on the same labels"):
    inference.main(["--workdir", str(root / "run"), "--task", "sst2", "--out", str(out)])


def test_bench_inference_measures_picked_frontier_points(run, tmp_path):
  root, _ = run
  workdir = Path(shutil.copytree(root / "run", tmp_path / "run", symlinks=True))
  point = lambda m, cost, metric: {"config": [0, 0], "eta_multipliers": [m, m],
                                   "actual_fraction": cost, "held_out_metric": metric}
  (workdir / "search").mkdir()
  (workdir / "search" / "frontier.json").write_text(json.dumps({  # a synthetic frontier.
      "method": "adapler", "cost": "actual", "full": {"held_out_metric": 0.9},
      "frontier": [dict(point(4.0, 0.2, 0.6), config=[2, 2]),
                   dict(point(0.0, 1.1, 0.9), config=[0, 0])]}))
  out = tmp_path / "frontier.json"
  _script("inference").main([
      "--workdir", str(workdir), "--task", "demo", "--batch-sizes", "4", "--max-examples", "12",
      "--systems", "ours-full,ours-adapler", "--frontier-budgets", "0.1,0.5,0.3,2",
      "--eta-scales", "0",
      "--repeats", "1", "--min-seconds", "0", "--retries", "0", "--out", str(out)])
  rows = {r["system"]: r for r in json.loads(out.read_text())}
  # 0.1 has no point; 0.5 and 0.3 pick the same one, measured once; 2 picks the best.
  assert list(rows) == ["ours-full", "ours-adapler", "ours-adapler eta@0.5a",
                        "ours-adapler eta@2a", "ours-adapler eta x0"]
  assert rows["ours-adapler eta x0"]["eta_multipliers"] == [0.0, 0.0]
  assert rows["ours-adapler eta x0"]["flops_speedup"] == rows["ours-adapler eta@2a"][
      "flops_speedup"]  # the same model reached by a global scaling and by the frontier.
  assert rows["ours-adapler eta@0.5a"]["eta_multipliers"] == [4.0, 4.0]
  assert rows["ours-adapler eta@2a"]["eta_multipliers"] == [0.0, 0.0]
  speedup = lambda name: rows[name]["flops_speedup"]
  keep_all, trained, drop_more = (speedup(f"ours-adapler{s}")
                                  for s in (" eta@2a", "", " eta@0.5a"))
  assert keep_all < 1.0  # eta x 0 keeps every token and still pays for the predictors.
  assert keep_all <= trained <= drop_more and keep_all < drop_more


def _has_torch() -> bool:
  return importlib.util.find_spec("torch") is not None


def test_compare_methods_best_point_under_each_budget():
  pt = lambda metric, padded, actual: {"label": f"{metric}", "metric": metric,
                                       "padded_fraction": padded, "actual_fraction": actual}
  result = {"series": {"frontier": [pt(0.6, 0.1, 0.2), pt(0.8, 0.3, 0.5), pt(0.9, 0.5, 1.0)],
                       "global": [pt(0.7, 0.2, 0.45), pt(0.95, 0.6, 1.2)]}}
  compare = _script("compare_methods")
  picked = compare.under_budgets(result, [0.1, 0.5, 1.0], "actual")
  assert picked[0.1] == {"frontier": None, "global": None}
  assert [picked[0.5][k]["metric"] for k in ("frontier", "global")] == [0.8, 0.7]
  assert [picked[1.0][k]["metric"] for k in ("frontier", "global")] == [0.9, 0.7]
  padded = compare.under_budgets(result, [0.25], "padded")[0.25]
  assert [padded[k]["metric"] for k in ("frontier", "global")] == [0.6, 0.7]
  assert "0.5: 80.00 (0.8, 0.500) | 70.00 (0.7, 0.450)" in compare.budget_table(picked, "actual")
  # --min-cost draws a panel's points from that cost up, cheapest first, per convention.
  frontier = result["series"]["frontier"]
  assert [p["metric"] for p in compare.drawn(frontier[::-1], "actual", 0.5)] == [0.8, 0.9]
  assert [p["metric"] for p in compare.drawn(frontier, "padded", 0.5)] == [0.9]
  assert compare.drawn(frontier[::-1], "padded") == frontier


def test_bench_arguments_are_checked_before_any_work(run, tmp_path):
  """A result file that a run keeps, a count below 1, no system: one line each (the
  benchmark's JSON replaced a run's summary.json; the counts were tracebacks)."""
  from adapler_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  root, _ = run
  inference, train_step = _script("inference"), _script("train_step")
  base = ["--workdir", str(root / "run"), "--task", "demo"]
  summary = root / "run" / "summary.json"
  before = summary.read_bytes()
  for parse, args, message in (
      (inference.parse_args, base + ["--out", str(summary)],
       f"--out {summary} would overwrite a file {root / 'run'} keeps"),
      (inference.parse_args, base + ["--batch-sizes", "0"],
       "--batch-sizes takes ints of at least 1, comma-separated, e.g. --batch-sizes 1,32; "
       "got '0'"),
      (inference.parse_args, base + ["--buckets", "abc"], "--buckets takes ints of at least 1"),
      (inference.parse_args, base + ["--eta-scales", "x"], "--eta-scales takes numbers"),
      (inference.parse_args, base + ["--max-examples", "0"], "--max-examples is 0; pass at "
                                                            "least 1"),
      (inference.parse_args, base + ["--threads", "0"], "--repeats and --threads must be at "
                                                       "least 1"),
      (inference.parse_args, base + ["--systems", "ours-fast"], "--systems 'ours-fast' names "
                                                               "unknown systems ['ours-fast']"),
      (inference.parse_args, base + ["--folds", "1"], "--folds takes row folds of at least 2"),
      (inference.parse_args, base + ["--frontier-budgets", "x"], "--frontier-budgets takes"),
      (inference.parse_args, base + ["--lat-configs", "padded:abc"], "--lat-configs takes"),
      (inference.parse_args, base + ["--retries", "-1"], "--retries is -1; pass 0 or more"),
      (inference.parse_args, base + ["--task", "demo", "--workdir", str(tmp_path)],
       f"--workdir {tmp_path} holds no train.py run"),  # the second task's, checked first.
      (train_step.parse_args, ["--length", "2"], "--length is 2; pass at least 3"),
      (train_step.parse_args, ["--systems", ""], "--systems '' names no system; choose from"),
      (train_step.parse_args, ["--batch-size", "0"], "--batch-size takes ints of at least 1"),
      (train_step.parse_args, ["--out", str(root / "run" / "config.json")],
       "would overwrite a file"),
      # A figure script's stem: its OUT.json would be the run's summary.json.
      (_script("tradeoff").parse_args, ["--from-workdirs", str(root / "run"), "--out",
                                        str(root / "run" / "summary")],
       f"--out {summary} would overwrite a file {root / 'run'} keeps")):
    with pytest.raises(UserError) as err:
      parse(args)
    assert message in str(err.value) and "\n" not in str(err.value), args
  assert summary.read_bytes() == before
  # A dot in a figure script's stem stays in the name: OUT.v2 is not OUT.json.
  assert _script("timing").figure_files("docs/x.v2") == (Path("docs/x.v2.json"),
                                                          Path("docs/x.v2.png"))


def test_interleaved_repeats_run_in_turn_under_a_progress_bar(capsys):
  """Each repeat times every system once, in order; the bar over the repeats goes to stderr
  and only when labelled."""
  timing, calls = _script("timing"), []
  systems = {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}
  seconds, results = timing.interleaved(systems, 3, 0.0, progress="demo, batch 1")
  assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-up, then A B, A B, A B.
  assert [len(seconds[n]) for n in systems] == [3, 3] and len(results["a"][0]) == 1
  captured = capsys.readouterr()
  assert "demo, batch 1:" in captured.err and "/3" in captured.err and not captured.out
  timing.interleaved(systems, 2, 0.0)
  assert capsys.readouterr().err == ""


@pytest.mark.parametrize("flags, start, message", [
    (["--eta-multipliers", "0.25,0.5"], "error: --eta-multipliers (", "must contain 1"),
    (["--eta-multipliers", "1,0.5"], "error: --eta-multipliers (", "rising order"),
    (["--min-cost", "1.5"], "error: --min-cost 1.5 ", "between 0 and 1")])
def test_compare_methods_checks_its_options_before_loading_a_run(tmp_path, flags, start,
                                                                 message):
  proc = subprocess.run([sys.executable, str(ROOT / "bench" / "compare_methods.py"),
                         "--adapler", str(tmp_path / "no_such_run"), *flags,
                         "--out", str(tmp_path / "out")], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2
  line, = proc.stderr.strip().splitlines()[-1:]
  assert line.startswith(start) and message in line
  assert not list(tmp_path.iterdir())  # nothing written


def test_profile_ops_exclusive_times_subtract_nested_events():
  profile_ops = _script("profile_ops")
  event = lambda start, duration, name: type("E", (), dict(start_ns=start, duration_ns=duration,
                                                           name=name))
  events = [event(50, 10, "b"), event(0, 100, "cond.3"), event(10, 30, "dot.7.clone"),
            event(20, 10, "gather.1")]
  assert dict(profile_ops.exclusive_times(events)) == {"cond.3": 60, "dot.7.clone": 20,
                                                       "gather.1": 10, "b": 10}
  assert [profile_ops.op_kind(n) for n in ("dot.7.clone", "ynn_fusion.616", "cond_1", "copy")] == [
      "dot", "ynn_fusion", "cond", "copy"]


def test_profile_ops_attributes_a_traced_pass(run):
  root, _ = run
  out = root / "profile.json"
  _script("profile_ops").main(["--workdir", str(root / "run"), "--task", "demo",
                               "--batch-size", "4", "--max-examples", "8", "--out", str(out)])
  result = json.loads(out.read_text())
  assert result["rows"] == 8 and result["op_ms"] > 0
  assert abs(sum(op["share"] for op in result["ops"]) - 1.0) < 1e-6
  kinds = {op["kind"] for op in result["ops"]}
  assert kinds & {"dot", "ynn_fusion"}  # the layers' matmuls are attributed by kind.
  assert result["threads"]
  assert result["environment"]["versions"]["jax"] == jax.__version__


def test_attention_bench_times_the_feed_forward_block_in_row_chunks():
  """`bench/attention.py --ffn` runs (in its own process: it pins its CPU) and times every
  chunking of the block."""
  proc = subprocess.run([sys.executable, str(ROOT / "bench" / "attention.py"), "--ffn", "1", "8"],
                        capture_output=True, text=True, timeout=300, cwd=ROOT,
                        env={**os.environ, "CPU": str(min(os.sched_getaffinity(0)))})
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  for label in ("whole", *(f"chunks of {r} rows" for r in (2048, 1024, 512, 256))):
    assert any(line.strip().startswith(label) and line.rstrip().endswith(" ms") for line in lines)


def test_compare_methods_refuses_runs_on_other_rows(tmp_path):
  """Runs drawn on one figure must report on the same rows: a run at another max length (a
  384-token SQuAD run beside 192-token ones) was drawn without a word."""
  from adapler_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  from adapler_jax.pipeline.config import base_config  # pylint: disable=g-import-not-at-top
  compare = _script("compare_methods")
  for name, max_length in (("a", 16), ("b", 16), ("c", 32)):
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(base_config("demo", max_length).to_json())
  compare.check_same_rows([str(tmp_path / "a"), str(tmp_path / "b")])
  with pytest.raises(UserError, match=re.escape(
      f"{tmp_path / 'c'} evaluates on other rows than {tmp_path / 'a'} (data.max_length 16 "
      "against 32)")):
    compare.check_same_rows([str(tmp_path / n) for n in "abc"])
