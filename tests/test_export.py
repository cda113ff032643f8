"""Export, load and predict: a tiny trained run leaves its workdir and predicts from raw text.

The AdapLeR run trains every phase on the tiny model; the LAT run imports that run's
fine-tuned classifier as a Hugging Face checkpoint (`train.init_from_hf`) instead of
fine-tuning, then trains LengthDrop. Both are exported, their workdirs and backbone deleted,
and predicted on SST-2 dev sentences in fresh processes.
"""

import csv
import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

import adapler_jax
from adapler_jax import data as data_lib
from adapler_jax import files, pipeline, weights
from adapler_jax.cli import run_cli
from adapler_jax.errors import UserError
from adapler_jax.infer import AdaptiveEngine, LengthEngine
from adapler_jax.pipeline import lat_phases
from adapler_jax.serve import ExportError
from adapler_jax.serve import from_run
from adapler_jax.serve.from_run import export_run
from tests.test_pipeline import tiny_config, write_backbone

pytestmark = pytest.mark.slow  # trains a tiny run: ~1 min on 2 CPU cores.

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
BATCH = 8


def _cli(*args, **kw):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, env=OFFLINE, **kw)


def _unlabelled(texts, tokenizer, max_length):
  ds = data_lib.TextDataset(ids=[str(i) for i in range(len(texts))], texts=(list(texts),),
                            labels=None, task="demo", source="test")
  return data_lib.tokenize(ds, tokenizer, max_length)


@pytest.fixture(scope="module")
def sentences(shared_data):
  dev = data_lib.load_split("sst2", "dev", shared_data / "sst2")
  return dev.texts[0][:40]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, sentences):
  """Both exports, each with the reference logits / kept counts its run gave in-process,
  after the workdirs and the backbone are deleted."""
  root = tmp_path_factory.mktemp("export")
  for name in ("backbone_dir", "hf_dir"):
    (root / name).mkdir()
  backbone = write_backbone(root / "backbone_dir")
  config = tiny_config(backbone)
  config.data.train_subset, config.data.dev_subset = 32, 16  # 2 steps per epoch.
  config.train.epochs = config.adapler.epochs = 1
  run = pipeline.prepare(config, root / "adapler")
  for phase in ("finetune", "saliency", "adapler"):  # export selects without a summary.
    pipeline.run_phase(run, phase)
  trained = pipeline.load_run(root / "adapler")
  tok = _unlabelled(sentences, trained.tokenizer, config.data.max_length)
  ref = {"adapler": AdaptiveEngine(trained.adapler_cfg, trained.adapler_params,
                                   batch_size=BATCH, max_length=16).run(tok)}

  # The fine-tuned classifier as a BertForSequenceClassification checkpoint, imported.
  bert, head = trained.backbone_params["bert"], trained.backbone_params["head"]
  hf = write_backbone(root / "hf_dir")
  save_file(weights.to_hf_state_dict(bert, head), str(hf / "model.safetensors"))
  lat = config.copy_and_resolve_references()
  lat.method, lat.train.init_from_hf = "lat", str(hf)
  lat.lat.epochs, lat.lat.batch_size, lat.lat.learning_rate = 1, 16, 1e-3
  run = pipeline.prepare(lat, root / "lat")
  for phase in ("finetune", "lengthdrop"):
    pipeline.run_phase(run, phase)
  (_, imported, _), = pipeline.load_finetuned(run, 1)
  _, lengthdrop = lat_phases.load_lengthdrop(run)
  ref["lat"] = LengthEngine(run.classifier_config(), lengthdrop,
                            lat_phases.eval_length_config(run), base=16,
                            flags=lat_phases.selection_flags(run), batch_size=BATCH,
                            max_length=16).run(tok)
  ref["imported"] = (imported, trained.backbone_params)

  out = {m: export_run(root / m, root / f"{m}_export") for m in ("adapler", "lat")}
  # The point an evaluate.py dial picked from an eta search goes out with the model.
  (root / "adapler" / "search").mkdir()
  (root / "adapler" / "search" / "chosen.json").write_text(json.dumps(
      {"rule": {"flops_budget": 0.5, "max_drop": None}, "eta_multipliers": [2.0, 0.5]}))
  out["adapler_chosen"] = export_run(root / "adapler", root / "adapler_chosen_export")
  ref["trained_eta"] = np.asarray(trained.adapler_params["speed"]["eta"])
  for name in ("adapler", "lat", "backbone_dir", "hf_dir"):
    shutil.rmtree(root / name)
  return out, ref, root


def test_hf_import_is_the_finetuning_result(exported):
  _, ref, _ = exported
  imported, original = ref["imported"]
  for a, b in zip(jax.tree.leaves(imported), jax.tree.leaves(original)):
    np.testing.assert_array_equal(a, b)
  assert jax.tree.structure(imported) == jax.tree.structure(original)


def test_export_records_the_dtype_its_model_trained_in(tmp_path):
  """The training phase's own config says (a rerun may switch the run's dtype); without a
  readable record, None."""
  assert from_run._trained_dtype(tmp_path, "adapler") is None
  (tmp_path / "config.adapler.json").write_text(json.dumps({"dtype": "bfloat16"}))
  assert from_run._trained_dtype(tmp_path, "adapler") == "bfloat16"
  assert from_run._trained_dtype(tmp_path, "lengthdrop") is None
  (tmp_path / "config.lengthdrop.json").write_text("{not json")
  assert from_run._trained_dtype(tmp_path, "lengthdrop") is None


def test_export_layout(exported):
  out, _, _ = exported
  meta = json.loads((out["adapler"] / "config.json").read_text())
  assert meta["source"]["trained_dtype"] == meta["architecture"]["dtype"] == "float32"
  assert meta["method"] == "adapler" and meta["task"] == "demo"
  assert meta["architecture"]["hidden_size"] == 32 and meta["architecture"]["num_layers"] == 2
  assert len(meta["adapler"]["eta"]) == len(meta["adapler"]["theta"]) == 2
  assert len(meta["label_names"]) == 4 and meta["max_length"] == 16
  lat = json.loads((out["lat"] / "config.json").read_text())
  assert lat["lat"]["length_config"] == [13, 11] and lat["lat"]["chosen_from"] == (
      "lat.eval_length_ratio")  # the ratio's config: the run sets no length config.
  from safetensors.numpy import load_file
  names = load_file(str(out["adapler"] / "model.safetensors")).keys()
  assert any(n.startswith("predictors_0/") for n in names)
  assert not any("opt_state" in n or "mu" in n.split("/") or n.startswith("speed")
                 for n in names)
  assert (out["adapler"] / "tokenizer" / "tokenizer.json").exists()
  mode = lambda name: (out["adapler"] / name).stat().st_mode & 0o777  # pylint: disable=unnecessary-lambda-assignment
  assert mode("model.safetensors") == mode("config.json")  # readable as the user's files are.


def test_round_trip_in_a_fresh_process(exported, tmp_path, sentences):
  """adapler-predict in a new process, the workdir and backbone gone, offline: the same
  logits and kept counts as the trained run's engine; JSON lines in, for LAT."""
  out, ref, _ = exported
  text_file = tmp_path / "dev.txt"
  text_file.write_text("\n".join(sentences) + "\n")
  records = tmp_path / "dev.jsonl"
  records.write_text("".join(json.dumps({"id": f"s{i}", "text": s}) + "\n"
                             for i, s in enumerate(sentences)))
  table = tmp_path / "dev.csv"  # a header line, read as records are (not as a text).
  with open(table, "w", newline="") as f:
    csv.writer(f).writerows([("id", "text")] + [(f"s{i}", s) for i, s in enumerate(sentences)])
  for method, source in (("adapler", text_file), ("lat", records), ("adapler", table)):
    target = tmp_path / f"{method}_{source.suffix[1:]}.jsonl"
    chunks = ["--chunk-size", "3"] if source == table else []  # run and written 3 at a time.
    proc = _cli("adapler_jax.predict", "--model", str(out[method]), "--input", str(source),
                "--output", str(target), "--batch-size", str(BATCH), "--rationales", *chunks)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(l) for l in target.read_text().splitlines()]
    assert len(rows) == len(sentences)
    names = json.loads((out[method] / "config.json").read_text())["label_names"]
    for row in rows:
      assert {"id", "label", "label_index", "probabilities", "logits", "length", "kept_tokens",
              "tokens", "char_spans", "kept_positions"} <= row.keys()
      assert row["label"] in names and list(row["probabilities"]) == names
      assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-9)
      assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
      kept = row["kept_tokens"]
      assert kept == sorted(kept, reverse=True) and kept[0] <= row["length"]
      assert [len(p) for p in row["kept_positions"]] == kept
      text = sentences[int(row["id"]) - 1 if source == text_file else int(row["id"][1:])]
      assert [s is None for s in row["char_spans"]] == [t in ("[CLS]", "[SEP]")
                                                   for t in row["tokens"]]
      assert all(s[0] == 0 and text[s[1]:s[2]].lower() == t.removeprefix("##")
                 for t, s in zip(row["tokens"], row["char_spans"]) if s is not None)
    assert [r["id"] for r in rows] == ([str(i + 1) for i in range(len(sentences))]
                                       if source == text_file
                                       else [f"s{i}" for i in range(len(sentences))])
    logits = np.asarray([r["logits"] for r in rows], np.float32)
    if chunks:  # other batches, as the engine forms them: equal to rounding, not bit for bit.
      np.testing.assert_allclose(logits, ref[method].logits, atol=1e-6, rtol=0)
    else:
      np.testing.assert_array_equal(logits, ref[method].logits)
    np.testing.assert_array_equal([r["kept_tokens"] for r in rows], ref[method].kept_counts)
    if method == "adapler":  # the predictor scores, None where a token was dropped before.
      assert all(len(r["scores"]) == 2 and len(r["scores"][0]) == r["length"] for r in rows)
      assert all(sum(s is not None for s in r["scores"][1]) == r["kept_tokens"][0]
                 for r in rows)


def test_predictor_matches_the_engine(exported, sentences):
  out, ref, _ = exported
  predictor = adapler_jax.Predictor(out["adapler"], batch_size=BATCH)
  rows = predictor.predict(list(sentences))
  np.testing.assert_array_equal(np.asarray([r["logits"] for r in rows], np.float32),
                                ref["adapler"].logits)
  # Any iterable of inputs; one input alone, or ids that do not pair, is one line.
  assert predictor.predict(s for s in sentences[:3]) == rows[:3]
  for items, ids, message in (
      ("a delight", None, "items is one str, not a list of inputs; pass a list, e.g. "
                          "predict([text])"),
      (None, None, "items is NoneType, not a list of inputs"),
      (list(sentences[:3]), ["a"], "1 ids for 3 inputs; pass one id per input, or none"),
      (list(sentences[:2]), 5, "ids is one int, not a list of ids; pass one id per input"),
      (list(sentences[:2]), "ab", "ids is one str, not a list of ids; pass one id per")):
    with pytest.raises(data_lib.DataError, match="^" + re.escape(message)):
      predictor.predict(items, ids)
  with pytest.raises(data_lib.DataError, match="^" + re.escape(  # named the file nowhere.
      "in.jsonl: example id 'x' appears more than once; give every row its own id")):
    predictor.predict(list(sentences[:2]), ["x", "x"], source="in.jsonl")
  model = adapler_jax.load_model(out["lat"])
  assert model.method == "lat" and model.length_config == (13, 11)
  assert model.config.encoder == adapler_jax.EncoderConfig(
      **json.loads((out["lat"] / "config.json").read_text())["architecture"])
  longer = adapler_jax.Predictor(model, batch_size=BATCH, length_config=(16, 16))
  assert max(max(r["kept_tokens"]) for r in longer.predict(list(sentences))) == 16
  with pytest.raises(UserError, match=r"^length config \(\) has 0 entries; the model has 2 "):
    adapler_jax.Predictor(model, length_config=())  # not the exported config in its place.
  with pytest.raises(UserError, match="^batch_size '8' is not an int; pass e.g. batch_size=32$"):
    adapler_jax.Predictor(model, batch_size="8")
  with pytest.raises(UserError, match="^batch_size 0 is below 1; pass e.g. batch_size=32$"):
    adapler_jax.Predictor(model, batch_size=0)  # was the engine's ValueError.
  with pytest.raises(UserError, match=re.escape(
      "a length config (--length-config) applies to LAT exports; this one is AdapLeR, whose "
      "cutoffs set its speed: drop it")):
    adapler_jax.Predictor(out["adapler"], length_config=(16, 16))


def test_bad_model_and_output_are_one_line(exported, tmp_path, capsys):
  out, _, root = exported
  proc = _cli("adapler_jax.predict", "--model", str(tmp_path / "none"), input="x\n")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"error: model directory {tmp_path / 'none'} does not exist; pass the --output of "
      "adapler-export"]
  for bad, message in ((tmp_path, f"{tmp_path} is not an adapler-jax export"),
                       (out["adapler"] / "tokenizer", "is not an adapler-jax export")):
    with pytest.raises(SystemExit) as e:
      run_cli(lambda: adapler_jax.load_model(bad))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
  with pytest.raises(ExportError, match=re.escape(
      "model directory None is not a path; pass the --output of adapler-export")):
    adapler_jax.load_model(None)
  aside = tmp_path / ".gone.old-4242"  # a kill -9 between --force's two renames.
  shutil.copytree(out["adapler"], aside)
  with pytest.raises(ExportError, match=re.escape(
      f"model directory {tmp_path / 'gone'} does not exist; an interrupted adapler-export "
      f"--force left the previous export at {aside}: move it back (mv {aside} "
      f"{tmp_path / 'gone'}), or export again")):
    adapler_jax.load_model(tmp_path / "gone")
  aside.rename(tmp_path / "gone")
  assert adapler_jax.load_model(tmp_path / "gone").method == "adapler"
  workdir = tmp_path / "workdir"  # a train.py run passed where its export belongs.
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"method": "adapler", "backbone": "minilm"}))
  with pytest.raises(ExportError, match=re.escape(
      f"{workdir} is a train.py workdir, not an export; export it first: adapler-export "
      f"--workdir {workdir} --output DIR, then pass DIR")):
    adapler_jax.load_model(workdir)
  cut = tmp_path / "cut"  # a truncated config.json, and a lost tokenizer: re-export.
  shutil.copytree(out["adapler"], cut)
  (cut / "config.json").write_text((cut / "config.json").read_text()[:40])
  with pytest.raises(ExportError, match=re.escape(
      f"{cut / 'config.json'} is damaged (not JSON); re-export the model to a new --output "
      "(a folder that is no readable export is never replaced)")):
    adapler_jax.load_model(cut)
  shutil.copy(out["adapler"] / "config.json", cut / "config.json")
  shutil.rmtree(cut / "tokenizer")
  with pytest.raises(ExportError, match=re.escape(
      f"no tokenizer in {cut / 'tokenizer'}; re-export the model")):
    adapler_jax.load_model(cut)
  damaged = tmp_path / "damaged"  # a config.json that lost the fields load_model reads.
  shutil.copytree(out["adapler"], damaged)
  meta = json.loads((damaged / "config.json").read_text())
  del meta["architecture"], meta["inputs"]
  (damaged / "config.json").write_text(json.dumps(meta))
  with pytest.raises(ExportError, match=re.escape(
      f"{damaged / 'config.json'} lacks architecture, inputs; re-export the model")):
    adapler_jax.load_model(damaged)
  shutil.copytree(out["lat"], damaged / "lat")  # a LAT export without its own section.
  meta = json.loads((damaged / "lat" / "config.json").read_text())
  del meta["lat"]
  (damaged / "lat" / "config.json").write_text(json.dumps(meta))
  with pytest.raises(ExportError, match=re.escape(
      f"{damaged / 'lat' / 'config.json'} lacks lat; re-export the model")):
    adapler_jax.load_model(damaged / "lat")
  # --output never lands on the export's own files, nor on a folder.
  config = out["adapler"] / "config.json"
  before = config.read_bytes()
  proc = _cli("adapler_jax.predict", "--model", str(out["adapler"]), "--output", str(config),
              input="x\n")
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      f"error: --output {config} would overwrite a file {out['adapler']} keeps; write the "
      "result elsewhere, e.g. beside it under another name"]
  assert config.read_bytes() == before
  proc = _cli("adapler_jax.predict", "--model", str(out["adapler"]), "--output", str(tmp_path),
              input="x\n")
  assert proc.returncode == 2
  assert f"is a directory; pass a file name, e.g. --output {tmp_path / 'result.json'}" in (
      proc.stderr)
  # Not inside an export, where a file would block a later adapler-export --force.
  inside = out["adapler"] / "pred.jsonl"
  proc = _cli("adapler_jax.predict", "--model", str(out["adapler"]), "--output", str(inside),
              input="x\n")
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      f"error: --output {inside} is inside the export {out['adapler']}, where adapler-export "
      "--force would refuse to replace it; write it beside the export, e.g. --output "
      f"{out['adapler'].resolve().with_name(out['adapler'].name + '_pred.jsonl')}"]
  assert not inside.exists()
  beside = out["adapler"].with_name(out["adapler"].name + "_result.json")
  for folder in (out["adapler"], out["adapler"] / "tokenizer"):
    with pytest.raises(UserError, match=re.escape(
        f"--output {folder} is a directory; pass a file name, e.g. --output {beside}")):
      files.check_output(folder)
  files.check_output(beside)  # and the suggestion is taken.
  proc = _cli("adapler_jax.predict", "--model", str(out["lat"]), "--length-config", "a,b",
              input="x\n")  # the example fits the model: 2 layers at 16 tokens.
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      "error: --length-config 'a,b' is not a comma-separated list of ints, e.g. 13,11"]
  for value, problem in (("", "() has 0 entries; the model has 2 layers: give one length per "
                              "layer"),  # was ignored: the exported config ran.
                         ("12,14", "(12, 14) must be non-increasing layer by layer")):
    proc = _cli("adapler_jax.predict", "--model", str(out["lat"]), f"--length-config={value}",
                input="x\n")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[0].startswith(
        f"error: --length-config {problem}"), proc.stderr
  # A bad record in a later chunk is refused before any chunk runs: nothing on stdout.
  records = tmp_path / "chunks.jsonl"
  records.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n{"review": "d"}\n')
  proc = _cli("adapler_jax.predict", "--model", str(out["adapler"]), "--input", str(records),
              "--chunk-size", "2")
  assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.strip().splitlines() == [
      f"error: {records} input 4: the record lacks the model's input field(s) text (it "
      "has review); add them, or use text"], proc.stderr
  texts = tmp_path / "texts.txt"  # --output on --input would replace the texts.
  texts.write_text("a film\n")
  proc = _cli("adapler_jax.predict", "--model", str(out["adapler"]), "--input", str(texts),
              "--output", str(texts))
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      f"error: --output {texts} is the --input file; the predictions would replace the "
      "texts: write them to another file"]
  assert texts.read_text() == "a film\n"
  proc = _cli("adapler_jax.predict", "--model", str(out["adapler"]), "--input", str(texts),
              "--output", str(texts / "p.jsonl"))  # a file where a folder would go.
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      f"error: --output {texts / 'p.jsonl'}: {texts} is a file, not a folder; pass a path in "
      "a folder"]
  proc = _cli("adapler_jax.predict", "--model", str(out["adapler"]), "--input", str(texts),
              "--format", "squad")
  assert proc.returncode == 2 and re.fullmatch(
      r"error: --format squad needs a span QA model \(SQuAD\); this one is \w+: pass text or "
      "JSON lines", proc.stderr.strip())
  proc = subprocess.run([sys.executable, "-m", "adapler_jax.predict", "--model",
                         str(out["adapler"])], input=b"caf\xe9 au lait\n", cwd=ROOT,
                        capture_output=True, timeout=300, env=OFFLINE)  # stdin, not UTF-8.
  assert proc.returncode == 2 and proc.stderr.decode().strip().splitlines() == [
      "error: stdin is not UTF-8 text (byte 0xe9); convert it to UTF-8"]
  with pytest.raises(UserError) as err:  # another export's files are kept as well.
    files.check_output(out["lat"] / "config.json", out["adapler"])
  assert str(err.value) == (f"--output {out['lat'] / 'config.json'} would overwrite a file "
                            f"{out['lat']} keeps; write the result elsewhere, e.g. beside it "
                            "under another name")
  with pytest.raises(ExportError, match=re.escape(
      f"model directory {texts} is a file, not a directory; pass the --output of")):
    adapler_jax.load_model(texts)
  binary = tmp_path / "latin1.txt"
  binary.write_bytes(b"caf\xe9 au lait\n")
  proc = _cli("adapler_jax.predict", "--model", str(out["adapler"]), "--input", str(binary))
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      f"error: {binary} is not UTF-8 text (byte 0xe9); convert it to UTF-8"]
  tsv = tmp_path / "dev.tsv"  # a labelled TSV read as text lines: refused, not predicted.
  tsv.write_text("sentence\tlabel\na fine film\t1\n")
  proc = _cli("adapler_jax.predict", "--model", str(out["adapler"]), "--input", str(tsv))
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      f"error: {tsv} input 1: the model takes one text, this input has 2 tab-separated "
      "fields; give one text per input (a tab inside a text: a JSON-lines record "
      '{"text": ...}; a GLUE task\'s TSV test file: --format glue)']
  proc = _cli("adapler_jax.predict", "--model", str(out["adapler"]), "--input", str(tsv),
              "--format", "glue", "--rationales")  # rationales would be computed, then dropped.
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      "error: --rationales writes the tokens to JSON lines, and the GLUE submission file holds "
      "labels only: drop --rationales, or pass text or JSON lines"]
  # An existing export is kept unless --force; a non-export is never replaced.
  before = (out["lat"] / "model.safetensors").read_bytes()
  with pytest.raises(ExportError, match="holds an export; pass --force"):
    adapler_jax.serve.write_model(out["lat"], {}, {}, None)
  (tmp_path / "keep.txt").write_text("mine")
  with pytest.raises(ExportError, match="holds no export"):
    adapler_jax.serve.write_model(tmp_path, {}, {}, None, force=True)
  assert (out["lat"] / "model.safetensors").read_bytes() == before
  # Nor is an export with the user's own files in it (predictions written beside it).
  (out["lat"] / "p.jsonl").write_text("{}\n")
  with pytest.raises(ExportError) as err:
    adapler_jax.serve.write_model(out["lat"], {}, {}, None, force=True)
  assert str(err.value) == (f"--output {out['lat']} holds files that are not the export's "
                            "(p.jsonl), which --force would delete; move them out of the "
                            "folder, or pass another --output")
  assert (out["lat"] / "p.jsonl").read_text() == "{}\n"
  assert (out["lat"] / "model.safetensors").read_bytes() == before
  (out["lat"] / "p.jsonl").unlink()
  assert sorted(p.name for p in root.iterdir()) == ["adapler_chosen_export", "adapler_export",
                                                    "lat_export"]


@pytest.mark.parametrize("method, field, value, problem", [
    ("adapler", "label_names", ["a"], 'label_names is ["a"], but it must be a list of the '
     "model's 4 class names"),  # gave probabilities over 1 class, or an IndexError.
    ("adapler", "max_length", 4096, "max_length is 4096, but it must be an integer in [2, 64]"),
    ("adapler", "max_length", 0, "max_length is 0, but it must be an integer in [2, 64]"),
    ("adapler", "adapler.eta", [0.5], "adapler.eta is [0.5], but it must be a list of 2 "
     "numbers, one per layer"),
    ("adapler", "adapler.eta", "high", 'adapler.eta is "high", but it must be a list of 2'),
    ("adapler", "adapler.theta", None, "adapler.theta is null, but it must be a list of 2"),
    ("adapler", "format_version", "1", 'format_version is "1", not an integer'),
    ("adapler", "method", "bert", 'method is "bert", not one of adapler, lat'),
    ("lat", "lat.length_config", [20, 11], "lat.length_config is [20, 11], but it must be 2 "
     "non-increasing lengths in [2, 16]"),
    ("lat", "lat.base", None, "lat.base is null, but it must be an integer in [2, 64]"),
    ("lat", "lat.length_config", ["16", 8.5], 'lat.length_config is ["16", 8.5], but it must '
     "be 2 non-increasing lengths"),  # int() would have read them as 16, 8.
])
def test_config_values_the_model_cannot_run_with_are_one_line(exported, tmp_path, method, field,
                                                               value, problem):
  """A hand-edited or damaged config.json, whose weights still pass their checksums."""
  out, _, _ = exported
  edited = Path(shutil.copytree(out[method], tmp_path / "edited"))
  meta = json.loads((edited / "config.json").read_text())
  *section, key = field.split(".")
  node = meta[section[0]] if section else meta
  if value is None:
    del node[key]
  else:
    node[key] = value
  (edited / "config.json").write_text(json.dumps(meta))
  with pytest.raises(ExportError) as err:
    adapler_jax.load_model(edited)
  assert str(err.value).startswith(f"{edited / 'config.json'}: {problem}"), str(err.value)
  assert "\n" not in str(err.value)


def test_an_eta_search_pick_is_what_the_export_holds(exported, tmp_path):
  out, ref, _ = exported
  chosen = adapler_jax.load_model(out["adapler_chosen"])
  np.testing.assert_allclose(chosen.params["speed"]["eta"], ref["trained_eta"] * [2.0, 0.5],
                             rtol=1e-6)
  assert chosen.speed["chosen_from"] == "search/chosen.json"
  assert adapler_jax.load_model(out["adapler"]).speed["chosen_from"] == "trained eta"
  # The export CLI says which dial it shipped, and where a search pick came from.
  eta = ", ".join(f"{e:.4g}" for e in chosen.speed["eta"])
  assert from_run.speed_summary(chosen.meta) == (
      f"AdapLeR at eta {eta}: the search point evaluate.py --flops-budget 0.5 picked "
      "(search/chosen.json in the workdir; delete it to export the run's own setting)")
  assert from_run.speed_summary(adapler_jax.load_model(out["lat"]).meta) == (
      "LAT at lengths 13, 11 (lat.eval_length_ratio)")
  flipped = tmp_path / "flipped"
  shutil.copytree(out["adapler"], flipped)
  weights_file = flipped / "model.safetensors"
  raw = bytearray(weights_file.read_bytes())
  raw[-3] ^= 0x10  # one bit of the last array's data.
  weights_file.write_bytes(bytes(raw))
  with pytest.raises(UserError, match=re.escape(f"{weights_file}: ") + r"\S+ fails its checksum "
                     r"\(1 arrays do\); the file changed after export: re-export the model$"):
    adapler_jax.load_model(flipped)
  bad = tmp_path / "cut"
  shutil.copytree(out["adapler"], bad)
  weights_file = bad / "model.safetensors"
  weights_file.write_bytes(weights_file.read_bytes()[:5000])
  with pytest.raises(UserError, match=re.escape(f"{weights_file} cannot be read (") + ".*" +
                     re.escape("); re-export the model")):
    adapler_jax.load_model(bad)


@pytest.mark.parametrize("script, flag, usage", [
    ("adapler-predict", "--model", "adapler-predict --model exports/sst2 --input texts.txt"),
    ("adapler-export", "--workdir", "adapler-export --workdir runs/sst2 --output exports/sst2")])
def test_console_scripts_describe_their_flags(script, flag, usage):
  """The installed entry points' --help shows the module's docstring and flags, as
  `python -m adapler_jax.<module> --help` does."""
  path = Path(sys.executable).parent / script
  if not path.exists():
    pytest.skip(f"{script} is not installed beside {sys.executable} (pip install -e .)")
  proc = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=120)
  assert f"  {flag}: " in proc.stdout and usage in proc.stdout
  assert f"\n{script}:\n" in proc.stdout and str(path) not in proc.stdout  # the flags' head.
