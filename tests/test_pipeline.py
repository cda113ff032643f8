"""End-to-end pipeline on a tiny model and tiny data: every phase, evaluation, resume."""

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from adapler_jax import pipeline, weights
from adapler_jax.pipeline import context
from adapler_jax.errors import UserError
from adapler_jax.models.bert import Bert, EncoderConfig
from adapler_jax.train import classifier

pytestmark = pytest.mark.slow  # trains tiny runs: ~2 min on 2 CPU cores.

ROOT = Path(__file__).resolve().parents[1]
TINY = EncoderConfig.tiny(vocab_size=30522, max_position_embeddings=64)


def write_backbone(directory: Path, cfg: EncoderConfig = TINY) -> Path:
  """A random BERT checkpoint directory of shape `cfg` with the embedded tokenizer's
  vocabulary."""
  ids = jnp.zeros((1, 2), jnp.int32)
  params = Bert(cfg).init(jax.random.key(0), ids, ids, jnp.zeros((1, 2)))["params"]
  save_file(weights.to_hf_state_dict(params), str(directory / "model.safetensors"))
  (directory / "config.json").write_text(json.dumps({
      "model_type": "bert", "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
      "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "intermediate_size": cfg.intermediate_size,
      "max_position_embeddings": cfg.max_position_embeddings,
      "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12}))
  minilm = weights.embedded_dir("minilm")
  for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(minilm / name, directory / name)
  return directory


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory) -> Path:
  """A 2-layer width-32 BERT checkpoint directory with the embedded tokenizer's vocabulary."""
  return write_backbone(tmp_path_factory.mktemp("tiny_bert"))


def tiny_config(backbone: Path):
  c = pipeline.base_config("demo", max_length=16)  # one bucket width: few compiles.
  c.backbone = str(backbone)
  c.data.train_subset = 64
  c.data.dev_subset = 24
  c.train.epochs = 2
  c.train.batch_size = 16
  c.train.learning_rate = 1e-3
  c.train.eval_every_steps = 2
  c.train.log_every_steps = 2
  c.saliency.batch_size = 32
  c.adapler.epochs = 2
  c.adapler.batch_size = 16
  c.adapler.lambda_rate = 100.0
  c.eval.batch_size = 8
  c.eval.engine = "bucketed"
  return c


def test_all_phases_and_evaluation(tiny_backbone, tmp_path):
  workdir = tmp_path / "run"
  config = tiny_config(tiny_backbone)
  summary = pipeline.run_phase(pipeline.prepare(config, workdir), "all")

  on_disk = json.loads((workdir / "summary.json").read_text())
  assert on_disk == json.loads(json.dumps(summary))
  for key in ("task", "metric_name", "backbone_metric", "adapler_metric", "flops_speedup",
              "mean_kept_tokens_per_layer", "train_examples", "seconds"):
    assert key in summary
  assert summary["task"] == "demo" and summary["metric_name"] == "accuracy"
  assert summary["train_examples"] == 64 and summary["dtype"] == "float32"
  assert len(summary["mean_kept_tokens_per_layer"]) == TINY.num_layers
  assert 0.0 <= summary["adapler_metric"] <= 1.0 and summary["flops_speedup"] > 0
  # The terminal table names the epoch it reports and the rule that chose it (a fallback
  # past the tolerance was in summary.json alone), and says when the model costs more.
  assert re.fullmatch(r"best dev speedup within 1\.0 points of the backbone|no epoch within "
                      r"1\.0 points of the backbone: the best dev metric", summary["selection"])
  table = pipeline.format_summary(summary).splitlines()
  assert re.fullmatch(rf"selected +step {summary['adapler_step']}: "
                      f"{re.escape(summary['selection'])}", table[4]), table
  slower = pipeline.format_summary({**summary, "flops_speedup": 0.91}).splitlines()
  assert re.fullmatch(r"FLOPs speedup +0\.91x \(more FLOPs than the backbone\)", slower[3])

  # Fine-tuning kept the 3 best evaluated checkpoints plus the latest.
  steps = sorted(int(p.name) for p in (workdir / "finetune").iterdir() if p.name.isdigit())
  assert steps[-1] == 8 and len(steps) <= 4
  # Saliency: one row per training example, keyed by id, zero on padding.
  stored = np.load(workdir / "saliency.npz")
  assert stored["saliency"].shape == (64, 16) and len(set(stored["ids"].tolist())) == 64
  assert np.all(stored["saliency"][stored["input_ids"] == 0] == 0)
  np.testing.assert_allclose(stored["saliency"].sum(1), 1.0, rtol=1e-5)
  # One AdapLeR checkpoint per epoch, and per-epoch logs with per-layer values.
  epochs = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()
            if '"adapler_epoch"' in l]
  assert [e["epoch"] for e in epochs] == [0, 1] and [e["lambda"] for e in epochs] == [10, 1000]
  for e in epochs:
    assert len(e["eta"]) == len(e["theta"]) == len(e["dev_kept_per_layer"]) == 2
    assert all(0.01 <= x <= 1 for x in e["eta"])
  assert list((workdir / "tensorboard").iterdir())

  # evaluate.py on the finished run, as a user would call it.
  out = tmp_path / "eval.json"
  proc = subprocess.run([sys.executable, "evaluate.py", "--workdir", str(workdir),
                         "--batch-size", "8", "--output", str(out)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  for key in ("task", "split", "num_examples", "metric_name", "metric", "backbone_flops",
              "adapler_flops", "flops_speedup", "kept_tokens_per_layer", "examples_per_second"):
    assert key in result
  assert result["num_examples"] == 24 and len(result["kept_tokens_per_layer"]) == 2
  assert f"kept tokens per layer (mean): {result['kept_tokens_per_layer'][0]:.1f} " in proc.stdout
  assert result["flops_speedup"] == pytest.approx(result["backbone_flops"] /
                                                  result["adapler_flops"])
  assert result["metric"] == pytest.approx(summary["adapler_metric"])
  # The same dev rows through the same engine: the summary's cost is evaluate.py's.
  assert result["flops_speedup"] == pytest.approx(summary["flops_speedup"])
  np.testing.assert_allclose(result["kept_tokens_per_layer"],
                             summary["mean_kept_tokens_per_layer"], rtol=1e-6)

  # Anytime AdapLeR: the search over per-layer eta multipliers, then the max-drop dial.
  config.search.iterations, config.search.population = 1, 3
  config.search.mutations = config.search.crossovers = 3
  config.search.held_out = 32
  config.search.eta_multipliers = (0.0, 1.0, 4.0)
  config.search.cost = "actual"
  found = pipeline.run_phase(pipeline.prepare(config, workdir, phase="search"), "search")
  assert json.loads((workdir / "config.search.json").read_text())["search"]["held_out"] == 32
  stored = [json.loads(l) for l in (workdir / "search" / "store.jsonl").read_text().splitlines()]
  genes = [tuple(r["gene"]) for r in stored]
  assert len(genes) == len(set(genes)) == found["scored"]
  assert {(0, 0), (1, 1), (2, 2)} <= set(genes)  # the global scalings start the search.
  assert all(0 <= i < 3 for g in genes for i in g)
  no_drop = next(r for r in stored if r["gene"] == [0, 0])  # eta x 0 keeps every token.
  assert no_drop["actual_fraction"] > max(r["actual_fraction"] for r in stored
                                          if r["gene"] != [0, 0])
  costs = [r["actual_fraction"] for r in found["frontier"]]
  scores = [r["held_out_metric"] for r in found["frontier"]]
  assert costs == sorted(costs) and all(b > a for a, b in zip(scores, scores[1:]))
  proc = subprocess.run([sys.executable, "evaluate.py", "--workdir", str(workdir),
                         "--max-drop", "100", "--output", str(out)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  cheapest = found["frontier"][0]
  assert result["chosen_from_frontier"]["eta_multipliers"] == cheapest["eta_multipliers"]
  assert result["metric"] == pytest.approx(cheapest["dev_metric"])

  # Another eta grid gives each gene another meaning: the store refuses it and stays as it
  # is, and so do the configs evaluate.py and adapler-export read.
  kept = {name: (workdir / name).read_bytes()
          for name in ("search/store.jsonl", "config.json", "config.search.json")}
  config.search.eta_multipliers = (0.0, 1.0, 2.0)
  with pytest.raises(UserError, match=r"store\.jsonl holds scores of another eta_multipliers "
                     r"than this search scores; move \S+search aside"):
    pipeline.run_phase(pipeline.prepare(config, workdir, phase="search"), "search")
  assert {name: (workdir / name).read_bytes() for name in kept} == kept


def count_steps(monkeypatch, module, make_step: str) -> list:
  """Patches `module.make_step` so that each step its functions take appends its state's
  step count to the list returned."""
  real, taken = getattr(module, make_step), []

  def counting(*args, **kwargs):
    step_fn = real(*args, **kwargs)

    def step(state, *inputs):
      taken.append(int(state.step))
      return step_fn(state, *inputs)
    return step

  monkeypatch.setattr(module, make_step, counting)
  return taken


def test_finetune_resumes_to_the_same_parameters(tiny_backbone, tmp_path, monkeypatch,
                                                 capsys, caplog):
  config = tiny_config(tiny_backbone)
  config.train.eval_every_steps = 3
  straight = pipeline.prepare(config, tmp_path / "straight")
  pipeline.finetune(straight)
  # The bar does not stay on screen; one line of the finished phase does.
  assert re.fullmatch(r"finetune: 8 steps in \d+ s, dev accuracy \d{1,3}\.\d{2}\n",
                      capsys.readouterr().out)

  interrupted = pipeline.prepare(config, tmp_path / "resumed")
  assert pipeline.finetune(interrupted, stop_after_steps=5) is None
  assert capsys.readouterr().out == ""  # stopped, not finished.
  # Read mid-training, the run says how far its phase got; a finished one says nothing.
  with caplog.at_level(logging.WARNING):
    pipeline.load_finetuned(straight)
    assert "stopped at step" not in caplog.text
    pipeline.load_finetuned(interrupted)
  assert re.search(r"resumed/finetune: the finetune phase stopped at step 5 of 8; using what it "
                   r"saved so far \(train.py --phase finetune resumes it\)", caplog.text)
  # The note is advisory: a latest step whose JSON is damaged leaves it out, and the reads
  # that use that step report the damage themselves.
  from adapler_jax.pipeline.loop import note_if_unfinished  # pylint: disable=g-import-not-at-top
  from adapler_jax.train.checkpoints import Checkpointer  # pylint: disable=g-import-not-at-top
  (tmp_path / "damaged").mkdir()
  shutil.copytree(tmp_path / "resumed" / "finetune", tmp_path / "damaged" / "finetune")
  for path in (tmp_path / "damaged" / "finetune" / "5" / "config").rglob("*"):
    if path.is_file():
      path.write_text("{not json")
  caplog.clear()
  with caplog.at_level(logging.WARNING), Checkpointer(tmp_path / "damaged" / "finetune") as ckpt:
    note_if_unfinished(ckpt, "finetune")
  assert "stopped at step" not in caplog.text
  resumed = pipeline.prepare(config, tmp_path / "resumed")
  taken = count_steps(monkeypatch, classifier, "make_finetune_step")
  pipeline.finetune(resumed)
  assert taken == [5, 6, 7]  # only the steps the interrupted run had not taken.
  assert re.fullmatch(r"finetune: 3 steps in \d+ s \(resumed at step 5 of 8\), "
                      r"dev accuracy \d{1,3}\.\d{2}\n", capsys.readouterr().out)

  def final(workdir):
    from adapler_jax.train.checkpoints import Checkpointer
    with Checkpointer(workdir / "finetune") as ckpt:
      assert ckpt.latest_step() == 8
      return ckpt.restore(8)[0]

  a, b = final(tmp_path / "straight"), final(tmp_path / "resumed")
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_bad_workdir_is_one_line(tmp_path):
  proc = subprocess.run([sys.executable, "evaluate.py", "--workdir", str(tmp_path / "none")],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"error: {tmp_path / 'none'} does not exist; pass the --workdir of a train.py run"]


def test_a_run_records_its_local_paths_absolute(tiny_backbone, tmp_path, monkeypatch):
  """A run trained with relative paths is read from any directory: config.json holds its
  backbone and data folder as absolute paths. Hub ids and embedded names stay as given."""
  monkeypatch.chdir(tiny_backbone.parent)
  (tiny_backbone.parent / "tiny_data").mkdir(exist_ok=True)  # the demo task's vocabulary.
  shutil.copy(tiny_backbone / "vocab.txt", tiny_backbone.parent / "tiny_data")
  config = tiny_config(Path(tiny_backbone.name))
  config.backbone, config.data.data_dir = tiny_backbone.name, "tiny_data"
  config.train.init_from_hf = "org/model"  # a hub id: no folder of that name here.
  workdir = tmp_path / "run"
  pipeline.prepare(config, workdir, phase="finetune")
  stored = pipeline.read_config(workdir)
  assert stored.backbone == str(tiny_backbone.absolute())
  assert stored.data.data_dir == str(tiny_backbone.parent / "tiny_data")
  assert stored.train.init_from_hf == "org/model"
  assert config.backbone == tiny_backbone.name  # the caller's config is not changed.
  (tmp_path / "elsewhere").mkdir()
  monkeypatch.chdir(tmp_path / "elsewhere")
  run = pipeline.prepare(stored, workdir, record=False)
  assert run.encoder.num_layers == TINY.num_layers
  config.backbone = "minilm"
  assert context.with_absolute_paths(config).backbone == "minilm"


def test_lat_phases_and_evaluation(tiny_backbone, tmp_path):
  """finetune -> lengthdrop -> evaluate on the tiny model, then evaluate.py at a config."""
  workdir = tmp_path / "lat"
  config = tiny_config(tiny_backbone)
  config.method = "lat"
  config.train.epochs = 1
  config.lat.epochs = 1
  config.lat.batch_size = 16
  config.lat.learning_rate = 1e-3
  summary = pipeline.run_phase(pipeline.prepare(config, workdir), "all")
  assert summary["length_config"] == [13, 11]  # ceil(0.8 * 16), ceil(0.8 * 13).
  for key in ("standard_metric", "lat_metric", "lat_reduced_metric", "flops_speedup_padded",
              "flops_speedup_actual"):
    assert key in summary
  assert summary["flops_speedup_padded"] > 1.0
  epochs = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()
            if '"lengthdrop_epoch"' in l]
  assert [e["epoch"] for e in epochs] == [0] and "dev_metric_smallest" in epochs[0]
  for phase in ("finetune", "lengthdrop", "evaluate"):  # each phase records what it ran with.
    assert json.loads((workdir / f"config.{phase}.json").read_text())["method"] == "lat"
    assert "versions" in json.loads((workdir / f"environment.{phase}.json").read_text())

  out = tmp_path / "eval.json"
  proc = subprocess.run([sys.executable, "evaluate.py", "--workdir", str(workdir),
                         "--length-config", "12,8", "--output", str(out)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  assert result["length_config"] == [12, 8] and result["num_examples"] == 24
  assert len(result["kept_tokens_per_layer"]) == 2
  assert max(result["kept_tokens_per_layer"]) <= 12
  bad = subprocess.run([sys.executable, "evaluate.py", "--workdir", str(workdir),
                        "--length-config", "8,12"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines() == [
      "error: --length-config (8, 12) must be non-increasing layer by layer, e.g. 13,11 "
      "(ratio 0.2 per layer)"]

  # The anytime search on held-out train rows, then the budget dial over its frontier.
  config.search.iterations, config.search.population = 2, 3
  config.search.mutations = config.search.crossovers = 3
  config.search.held_out = 32
  result = pipeline.run_phase(pipeline.prepare(config, workdir), "search")
  on_disk = json.loads((workdir / "search" / "frontier.json").read_text())
  assert on_disk["frontier"] == result["frontier"] and result["held_out_rows"] == 32
  assert (workdir / "search" / "frontier.png").stat().st_size > 0
  costs = [r["padded_fraction"] for r in result["frontier"]]
  scores = [r["held_out_metric"] for r in result["frontier"]]
  assert costs == sorted(costs) and all(b > a for a, b in zip(scores, scores[1:]))
  stored = (workdir / "search" / "store.jsonl").read_text().splitlines()
  assert len(stored) == result["scored"] == len({tuple(json.loads(l)["gene"]) for l in stored})
  source = json.loads((workdir / "search" / "store.source.json").read_text())
  assert source["keep_cls"] == config.lat.keep_cls and len(source["checkpoint"]) == 16
  assert on_disk["checkpoint"] == source["checkpoint"]  # evaluate and export check it.
  budget = max(costs)
  proc = subprocess.run([sys.executable, "evaluate.py", "--workdir", str(workdir),
                         "--flops-budget", str(budget), "--output", str(out)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  chosen = json.loads(out.read_text())["chosen_from_frontier"]
  best = max(result["frontier"], key=lambda r: r["held_out_metric"])
  assert chosen["config"] == best["config"] == json.loads(out.read_text())["length_config"]
  picked = json.loads((workdir / "search" / "chosen.json").read_text())
  assert picked["config"] == best["config"] and picked["checkpoint"] == source["checkpoint"]

  # An explicit floor below the smallest trained sub-model, (13, 11): the search, resumed from
  # its store, also scores configs LengthDrop never sampled, down to (8, 4).
  def stored_costs():
    rows = (workdir / "search" / "store.jsonl").read_text().splitlines()
    return {tuple(r["gene"]): r["padded_fraction"] for r in map(json.loads, rows)}
  trained_floor = stored_costs()
  assert min(trained_floor.values()) == trained_floor[(13, 11)]
  config.search.floor_ratio = 0.5
  pipeline.run_phase(pipeline.prepare(config, workdir), "search")
  lowered = stored_costs()
  rows = (workdir / "search" / "store.jsonl").read_text().splitlines()
  assert len(rows) == len(lowered)  # the resumed search scored no gene twice.
  logged = [r["step"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text()
                                   .splitlines()) if r["phase"] == "search"]
  assert logged == list(range(config.search.iterations + 1))  # the rerun's rows alone.
  assert trained_floor.items() <= lowered.items()
  assert min(lowered.values()) == lowered[(8, 4)] < trained_floor[(13, 11)]

  # Fine-tuning redone (other values at the same steps): LengthDrop, which started from the
  # old model, is not resumed: refused before anything is written.
  shutil.rmtree(workdir / "finetune")
  config.train.learning_rate *= 2
  pipeline.run_phase(pipeline.prepare(config, workdir, phase="finetune"), "finetune")
  kept = lambda: sorted((p.relative_to(workdir), p.read_bytes()) for p in workdir.rglob("*")
                        if p.is_file() and p.name != ".lock")
  before = kept()
  with pytest.raises(UserError) as err:
    pipeline.prepare(config, workdir, phase="lengthdrop")
  assert str(err.value) == (
      f"{workdir / 'lengthdrop'} was trained from a fine-tuned checkpoint that has since been "
      f"replaced (fine-tuning redone or trained further); delete {workdir / 'lengthdrop'} to "
      "train LengthDrop from the new one")
  assert kept() == before


def test_search_split_holds_out_train_rows_of_a_resplit(tmp_path, tokenizer):
  """A re-split task (AG News: one labelled file) still gives the search train rows that
  training never saw, and never a row of the reported split."""
  from adapler_jax import data
  from adapler_jax.pipeline import context
  c = pipeline.base_config("demo", max_length=16)
  c.data.update(resplit_source="train", resplit_train=60, resplit_test=20, train_subset=45)
  run = context.Run(c, tmp_path, data.get_task("demo"), None, {}, tokenizer, None)
  train, dev, held = run.dataset("train"), run.dataset("dev"), run.search_split(100)
  assert (len(train), len(dev), len(held)) == (45, 20, 15)
  assert not set(held.ids) & set(train.ids) and not set(held.ids) & set(dev.ids)
  assert run.search_split(100) is held
  c.data.train_subset = 0
  with pytest.raises(UserError, match="train_subset 0 uses all 60 train rows.*below 60"):
    context.Run(c, tmp_path, data.get_task("demo"), None, {}, tokenizer, None).search_split(8)


def test_a_search_on_other_train_rows_than_training_saw_is_refused(tmp_path, tokenizer):
  """The search holds out the train rows training never saw, so it reads the row fields as
  the training phases stored them; other values are refused with one line naming the fix."""
  from adapler_jax import data
  from adapler_jax.pipeline import context
  c = pipeline.base_config("demo", max_length=16)
  c.data.update(resplit_source="train", resplit_train=60, resplit_test=20, train_subset=45)
  (tmp_path / "config.finetune.json").write_text(c.to_json())
  make = lambda: context.Run(c, tmp_path, data.get_task("demo"), None, {}, tokenizer, None)
  assert len(make().search_split(100)) == 15
  c.data.train_subset = 30
  with pytest.raises(UserError, match=re.escape(
      "config.finetune.json trained the model with data.train_subset 45, but this search has "
      "30, so the rows it holds out could be training rows; repeat the run's data flags "
      "(--config.data.train_subset=45)")):
    make().search_split(100)
  c.data.train_subset, c.seed = 45, c.seed + 1
  with pytest.raises(UserError, match=r"trained the model with seed 22, but this search has 23"):
    make().search_split(100)
  c.seed = 22
  (tmp_path / "config.adapler.json").write_text(
      c.to_json().replace('"train_subset": 45', '"train_subset": 40'))
  with pytest.raises(UserError, match=re.escape(
      "the phases that trained this model saw different train rows (data.train_subset: "
      "config.finetune.json 45, config.adapler.json 40), so no rows are held out from all "
      "of them; search a run whose phases share their data flags")):
    make().search_split(100)


def test_a_windowed_task_search_compares_the_max_length(tmp_path, tokenizer):
  """ERASER reviews are cut into windows of `data.max_length` tokens, one example each, so
  another max length holds out other rows; other tasks' max length changes no row."""
  from adapler_jax import data
  from adapler_jax.pipeline import context
  for task, refused in (("eraser_movies", True), ("sst2", False)):
    c = pipeline.base_config(task, max_length=128)
    (tmp_path / "config.finetune.json").write_text(c.to_json())
    c.data.max_length = 256
    run = context.Run(c, tmp_path, data.get_task(task), None, {}, tokenizer, None)
    if not refused:
      run.check_trained_rows()
      continue
    with pytest.raises(UserError, match=re.escape(
        "config.finetune.json trained the model with data.max_length 128, but this search has "
        "256, so the rows it holds out could be training rows; repeat the run's data flags "
        "(--config.data.max_length=128)")):
      run.check_trained_rows()


def test_a_windowed_task_search_holds_out_whole_reviews(tmp_path, tokenizer):
  """An ERASER row is one window of a review; the search scores only windows of reviews
  that no trained window comes from (their text and label would be known)."""
  import json as json_lib
  from adapler_jax import data
  from adapler_jax.data import eraser
  from adapler_jax.pipeline import context
  movies = tmp_path / "movies"
  (movies / "docs").mkdir(parents=True)
  rows = []
  for r in range(10):
    name = f"{'neg' if r % 2 else 'pos'}R_{r}.txt"
    (movies / "docs" / name).write_text("".join(f"sentence {s} of review {r} .\n"
                                                for s in range(6 if r < 5 else 1)))
    rows.append({"annotation_id": name, "classification": "NEG" if r % 2 else "POS",
                 "evidences": []})
  for file in eraser.SPLIT_FILES.values():
    (movies / file).write_text("".join(json_lib.dumps(x) + "\n" for x in rows))
  c = pipeline.base_config("eraser_movies", max_length=16)
  c.data.data_dir = str(movies)
  train = data.load_split("eraser_movies", "train", movies, tokenizer=tokenizer, max_length=16)
  make = lambda: context.Run(c, tmp_path, data.get_task("eraser_movies"), None, {}, tokenizer,
                             None)
  for subset in (10, 4):  # half the windows: 4 unseen ones; 4 windows: 11 unseen.
    c.data.train_subset = subset
    held = make().search_split(1000)
    used = data.subset_indices(len(train), subset, c.seed)
    trained = {eraser.review_of(train.ids[i]) for i in used}
    unseen = [i for i in range(len(train)) if eraser.review_of(train.ids[i]) not in trained]
    assert len(held) == len(unseen) == {10: 4, 4: 11}[subset]  # the unseen reviews' windows.
    assert held.input_ids.tolist() == data.tokenize(train.take(np.asarray(unseen)), tokenizer,
                                                    16).input_ids.tolist()
  c.data.train_subset = 19  # a window of every review trains.
  with pytest.raises(UserError, match=re.escape(
      "every review among the train rows training never saw also has windows it trained on "
      "(data.train_subset 19 of 20 windows), so the search has no unseen review to score on; "
      "train on a smaller --config.data.train_subset")):
    make().search_split(1000)


def test_a_windowed_task_is_never_re_split_by_row(tmp_path):
  """A re-split by row would put windows of one review on both sides."""
  c = pipeline.base_config("eraser_movies", max_length=64)
  c.data.update(resplit_source="train", resplit_train=100, resplit_test=20)
  with pytest.raises(UserError, match=r"^data.resplit_train re-splits rows, and eraser_movies "
                     r"cuts each review into windows"):
    pipeline.prepare(c, tmp_path / "run")
  assert not (tmp_path / "run").exists()
  (tmp_path / "old").mkdir()  # a run trained so before is read as it ran, with a warning.
  assert pipeline.prepare(c, tmp_path / "old", record=False).task.name == "eraser_movies"


def test_a_span_search_compares_only_the_article_resplit(tmp_path, tokenizer, caplog):
  """SQuAD searches hold out whole articles, which no training question comes from, so
  only the re-split's fields must match; an imported fine-tuned model is warned about."""
  from adapler_jax import data
  from adapler_jax.pipeline import context
  c = pipeline.base_config("squad", max_length=64)
  c.data.update(resplit_source="dev", resplit_train=38, resplit_test=8, train_subset=3000)
  (tmp_path / "config.finetune.json").write_text(c.to_json())
  make = lambda: context.Run(c, tmp_path, data.get_task("squad"), None, {}, tokenizer, None)
  c.data.train_subset, c.seed = 5000, c.seed + 1
  make().check_trained_rows()
  c.data.resplit_seed = 1
  with pytest.raises(UserError, match=r"config.finetune.json trained the model with "
                     r"data.resplit_seed 0, but this search has 1"):
    make().check_trained_rows()
  c.data.resplit_seed, c.train.init_from_hf = 0, "some/model"
  (tmp_path / "config.finetune.json").write_text(c.to_json())
  make().check_trained_rows()
  assert "imported from some/model" in caplog.text
  # The import's own data fields chose no rows: only the phases trained here compare.
  c.train.init_from_hf, c.data.resplit_seed = "", 0
  (tmp_path / "config.adapler.json").write_text(c.to_json())
  imported = json.loads((tmp_path / "config.finetune.json").read_text())
  imported["data"]["resplit_seed"] = 5
  (tmp_path / "config.finetune.json").write_text(json.dumps(imported))
  make().check_trained_rows()
