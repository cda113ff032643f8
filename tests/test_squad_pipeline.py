"""Span QA end to end on a tiny model and a tiny SQuAD file: each QA config trains, is
summarised with EM / F1 and FLOPs, evaluate.py writes its report and predictions.json, and
the exported run answers the same questions from raw text exactly as evaluate.py did."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from adapler_jax import pipeline
from adapler_jax.errors import DataError
from adapler_jax.serve import Predictor
from adapler_jax.serve.from_run import export_run
from tests.test_cli_config import load
from tests.test_pipeline import ROOT, TINY, tiny_backbone, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow  # trains tiny QA runs: ~2 min on 2 CPU cores.

TOWNS = ("Alderby", "Brookmere", "Cindervale", "Dunmore", "Eastwick", "Fernhill", "Glenford",
         "Harrowgate")
PEOPLE = ("Anna Marsh", "Bruno Hale", "Clara Voss", "David Lund", "Elena Ruiz", "Felix Grant",
          "Greta Moss", "Hugo Bell", "Ivan Cole", "Julia Park", "Karl Stone", "Lena Frost",
          "Marco Diaz", "Nina West", "Oscar Reid", "Paula King")
GOODS = ("cheese", "wool", "glass", "paper", "cider", "pottery", "lace", "bread")
RIVERS = ("Avon", "Tamar", "Severn", "Wye", "Ouse", "Trent", "Exe", "Tees")


def article(i: int) -> dict:
  """One article: a paragraph of about 30 tokens, so each question takes two or three
  32-token windows at stride 16 (all padded to one width: one compilation per function),
  and four questions whose answers are in the text."""
  town, year, founder, goods, mayor = (TOWNS[i], str(1700 + 17 * i), PEOPLE[i], GOODS[i],
                                       PEOPLE[8 + i])
  context = (f"{town} is a town on the {RIVERS[i]} river, founded in {year} by {founder}. "
             f"It is known for its {goods}, and its mayor is {mayor}.")
  qas = ((f"When was {town} founded?", year), (f"Who founded {town}?", founder),
         (f"What is {town} known for?", goods), (f"Who is the mayor of {town}?", mayor))
  return {"title": town, "paragraphs": [{"context": context, "qas": [
      {"id": f"q{i}_{k}", "question": q, "answers": [{"text": a,
                                                      "answer_start": context.index(a)}]}
      for k, (q, a) in enumerate(qas)]}]}


@pytest.fixture(scope="module")
def squad_dir(tmp_path_factory):
  """A dev-v1.1.json of 8 articles, 32 questions (re-split by article in the runs)."""
  directory = tmp_path_factory.mktemp("squad")
  data = {"version": "1.1", "data": [article(i) for i in range(len(TOWNS))]}
  (directory / "dev-v1.1.json").write_text(json.dumps(data))
  return directory


def qa_config(name: str, backbone, data_dir):
  """configs/<name>.py at the tiny model's sizes: 32-token windows, stride 16, the dev file
  re-split by article (6 to train, 2 evaluated), one epoch per phase."""
  c = load(ROOT / "configs" / f"{name}.py")
  tiny = tiny_config(backbone)
  for field in ("train.batch_size", "train.learning_rate", "train.log_every_steps",
                "saliency.batch_size", "adapler.batch_size", "adapler.lambda_rate",
                "eval.batch_size", "eval.engine"):
    section, key = field.split(".")
    c[section][key] = tiny[section][key]
  c.backbone = str(backbone)
  c.data.max_length, c.data.doc_stride, c.data.data_dir = 32, 16, str(data_dir)
  c.data.resplit_source, c.data.resplit_train, c.data.resplit_test = "dev", 6, 2
  c.train.epochs = c.adapler.epochs = c.lat.epochs = 1
  c.lat.batch_size, c.lat.learning_rate, c.lat.num_sandwich = 16, 1e-3, 0
  c.search.batch_size = 16
  return c


@pytest.fixture(scope="module")
def finetuned(tiny_backbone, squad_dir, tmp_path_factory):  # noqa: F811
  """The span model fine-tuned once (phase 1 is the same for both configs): its `finetune/`
  checkpoints, which each run below resumes as finished."""
  workdir = tmp_path_factory.mktemp("squad_finetune")
  run = pipeline.prepare(qa_config("squad", tiny_backbone, squad_dir), workdir)
  assert run.adapler_config().head == run.classifier_config().head == "span"
  pipeline.run_phase(run, "finetune")
  return workdir / "finetune"


def prepare(name: str, backbone, data_dir, finetuned, workdir):
  workdir.mkdir()
  shutil.copytree(finetuned, workdir / "finetune")
  return pipeline.prepare(qa_config(name, backbone, data_dir), workdir)


def check_answers(directory, questions: dict[str, str]) -> None:
  """predictions.json answers every evaluated question with a piece of its context."""
  predictions = json.loads((directory / "predictions.json").read_text())
  assert set(predictions) == set(questions)
  assert all(isinstance(a, str) and a in questions[q] for q, a in predictions.items())


def evaluate_py(workdir, out, *args) -> dict:
  proc = subprocess.run([sys.executable, "evaluate.py", "--workdir", str(workdir), "--output",
                         str(out), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(out.read_text())


def predict_py(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "adapler_jax.predict", *map(str, args)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300, input=stdin)


def evaluated_questions(run) -> dict[str, str]:
  return {e.id: e.context for e in run.dataset("dev").examples.examples}


def test_squad_adapler_end_to_end(tiny_backbone, squad_dir, finetuned, tmp_path):  # noqa: F811
  """configs/squad.py: finetune -> saliency -> adapler -> summary, then evaluate.py."""
  workdir = tmp_path / "squad"
  run = prepare("squad", tiny_backbone, squad_dir, finetuned, workdir)
  summary = pipeline.run_phase(run, "all")
  assert summary["task"] == "squad" and summary["metric_name"] == "f1"
  for name in ("backbone", "adapler"):
    assert 0 <= summary[f"{name}_exact_match"] <= summary[f"{name}_f1"] <= 100
    assert summary[f"{name}_metric"] == pytest.approx(summary[f"{name}_f1"] / 100)
  assert summary["flops_speedup"] > 0
  assert len(summary["mean_kept_tokens_per_layer"]) == TINY.num_layers
  assert "EM / F1" in pipeline.format_result(run, summary)

  questions = evaluated_questions(run)
  result = evaluate_py(workdir, tmp_path / "report" / "eval.json")
  assert result["num_questions"] == len(questions) == 8
  assert result["f1"] == pytest.approx(summary["adapler_f1"])
  assert 0 <= result["exact_match"] <= 100
  assert result["flops_speedup"] == pytest.approx(summary["flops_speedup"]) == pytest.approx(
      result["backbone_flops"] / result["adapler_flops"])
  assert len(result["kept_tokens_per_layer"]) == TINY.num_layers
  check_answers(tmp_path / "report", questions)
  proc = subprocess.run([sys.executable, "evaluate.py", "--workdir", str(workdir), "--explain",
                         "Who won?"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and proc.stderr.strip() == (
      "error: --explain and --rationales draw a classifier's kept tokens; this run answers "
      "questions (squad): evaluate it without them")
  assert not (workdir / "explain.html").exists()
  answers = tmp_path / "report" / "predictions.json"
  before = answers.read_bytes()
  proc = subprocess.run([sys.executable, "evaluate.py", "--workdir", str(workdir), "--output",
                         str(answers)], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and proc.stderr.strip() == (  # the report replaced the answers.
      f"error: --output {answers}: the answers go beside the report as predictions.json; "
      f"name the report otherwise, e.g. {answers.with_name('eval.json')}")
  assert answers.read_bytes() == before

  # Exported, the run answers the whole SQuAD file from raw text (adapler-predict reads a
  # .json input as an official SQuAD file): evaluate.py's answers on its questions.
  export, answers = tmp_path / "export", tmp_path / "answers" / "predictions.json"
  subprocess.run([sys.executable, "-m", "adapler_jax.export", "--workdir", str(workdir),
                  "--output", str(export)], cwd=ROOT, check=True, capture_output=True)
  proc = predict_py("--model", export, "--input", squad_dir / "dev-v1.1.json", "--output",
                    answers)
  assert proc.returncode == 0, proc.stderr[-2000:]
  answered = json.loads(answers.read_text())
  evaluated = json.loads((tmp_path / "report" / "predictions.json").read_text())
  assert len(answered) == 32 and {q: answered[q] for q in evaluated} == evaluated
  proc = predict_py("--model", export, "--format", "squad", stdin="Who?\tNobody.\n")
  assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
      "error: --format squad reads an official SQuAD JSON file; pass it with --input PATH"]
  proc = predict_py("--model", export, "--input", squad_dir / "dev-v1.1.json", "--rationales")
  assert proc.returncode == 2 and proc.stderr.strip().startswith(
      "error: --rationales writes each window's tokens to JSON lines, and the SQuAD")
  # JSON lines named .json are read as JSON lines, not as a SQuAD file.
  lines, first = tmp_path / "questions.json", run.dataset("dev").examples.examples[:2]
  lines.write_text("".join(json.dumps({"id": e.id, "question": e.question,
                                       "context": e.context}) + "\n" for e in first))
  proc = predict_py("--model", export, "--input", lines)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [json.loads(line) for line in proc.stdout.splitlines()]
  assert [(r["id"], r["answer"]) for r in rows] == [(e.id, answered[e.id]) for e in first]


def test_squad_lat_end_to_end(tiny_backbone, squad_dir, finetuned, tmp_path):  # noqa: F811
  """configs/squad_lat.py: finetune -> lengthdrop -> summary, then evaluate.py at a ratio."""
  workdir = tmp_path / "squad_lat"
  run = prepare("squad_lat", tiny_backbone, squad_dir, finetuned, workdir)
  summary = pipeline.run_phase(run, "all")
  for name in ("standard", "standard_reduced", "lat", "lat_reduced"):
    assert 0 <= summary[f"{name}_exact_match"] <= summary[f"{name}_f1"] <= 100
  # Kept tokens never exceed a window's own (no predictors to pay for): actual >= 1.
  assert summary["flops_speedup_padded"] > 1 and summary["flops_speedup_actual"] >= 1
  assert len(summary["mean_kept_tokens_per_layer"]) == TINY.num_layers

  questions = evaluated_questions(run)
  result = evaluate_py(workdir, tmp_path / "eval.json", "--length-ratio", "0.2")
  assert result["method"] == "lat" and result["num_questions"] == len(questions)
  assert 0 <= result["exact_match"] <= result["f1"] <= 100
  assert 0 <= result["full_exact_match"] <= result["full_f1"] <= 100
  assert result["flops_speedup_padded"] > 1 and result["flops_speedup_actual"] >= 1
  assert len(result["kept_tokens_per_layer"]) == TINY.num_layers
  check_answers(tmp_path, questions)

  # Exported at the evaluated length config, the run answers its questions from raw text
  # (records, and question<TAB>context lines) as evaluate.py did.
  predictor = Predictor(export_run(workdir, tmp_path / "export"),
                        length_config=result["length_config"], batch_size=16)
  examples = run.dataset("dev").examples.examples
  rows = predictor.predict([{"question": e.question, "context": e.context} for e in examples],
                           [e.id for e in examples], rationales=True)
  evaluated = json.loads((tmp_path / "predictions.json").read_text())
  assert {r["id"]: r["answer"] for r in rows} == evaluated
  for row, example in zip(rows, examples):
    assert example.context[row["answer_start"]:row["answer_end"]] == row["answer"]
    assert row["windows"] == len(row["window_rationales"]) >= 2  # see `article`.
    assert row["length"] == sum(len(w["tokens"]) for w in row["window_rationales"])
    kept = [[len(p) for p in w["kept_positions"]] for w in row["window_rationales"]]
    assert row["kept_tokens"] == np.sum(kept, axis=0).tolist()
    for w in row["window_rationales"]:  # each token's characters in the question or context.
      spans, tokens, sep = w["char_spans"], w["tokens"], w["tokens"].index("[SEP]")
      texts = (example.question, example.context)
      assert [s is None for s in spans] == [t in ("[CLS]", "[SEP]") for t in tokens]
      assert [s[0] for s in spans if s] == [0] * (sep - 1) + [1] * (len(tokens) - sep - 2)
      assert all(texts[s[0]][s[1]:s[2]].lower() == t.removeprefix("##")
                 for t, s in zip(tokens, spans) if s)
  lines = [f"{e.question}\t{e.context}" for e in examples]
  assert [r["answer"] for r in predictor.predict(lines)] == [r["answer"] for r in rows]
  with pytest.raises(DataError, match=r"^input 0: empty context; give every question a context"):
    predictor.predict(["Who founded it?\t  "])
  with pytest.raises(DataError, match=r"^input 0: empty question; give every input a question$"):
    predictor.predict([" \t" + examples[0].context])
  with pytest.raises(DataError, match=r"question '0': its question takes 3\d of the 32 tokens of "
                     r"a window, .*; shorten the question \(the model's windows are fixed\)$"):
    predictor.predict(["who " * 30 + "?\t" + examples[0].context])
  with pytest.raises(DataError, match=r"^questions.jsonl question '0': its question takes"):
    predictor.predict(["who " * 30 + "?\t" + examples[0].context], source="questions.jsonl")
