"""Task `custom`: the user's own CSV / JSON-lines files, from the CLI and through `prepare`."""

import csv
import json
import logging
import os
import subprocess
import sys

import pytest

from adapler_jax import pipeline
from adapler_jax.errors import DataError, UserError
from tests.test_pipeline import ROOT, tiny_backbone, tiny_config  # pylint: disable=unused-import

WORDS = {"pos": ("great", "lovely", "moving"), "neg": ("awful", "dull", "clumsy")}


def reviews(n: int):
  for i in range(n):
    label = ("neg", "pos")[i % 2]
    yield {"review": f"a {WORDS[label][i % 3]} film, {i} minutes", "sentiment": label}


@pytest.fixture
def files(tmp_path):
  """train.csv (32 rows) and dev.jsonl (8 rows) with fields review / sentiment."""
  with open(tmp_path / "train.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, ["review", "sentiment"])
    writer.writeheader()
    writer.writerows(reviews(32))
  (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reviews(8)))
  return tmp_path


def custom_args(backbone, files, *extra):
  return ["--config", "configs/demo.py", "--config.task=custom",
          f"--config.backbone={backbone}", f"--config.data.train_file={files / 'train.csv'}",
          f"--config.data.dev_file={files / 'dev.jsonl'}", "--config.data.text_fields=review",
          "--config.data.label_field=sentiment", "--config.data.max_length=16",
          "--config.data.train_subset=0", "--config.data.dev_subset=0", *extra]


def train_py(*args, env=None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=env)


def test_finetune_on_csv_and_jsonl_from_the_cli(tiny_backbone, files, tmp_path):
  workdir, cache = tmp_path / "run", tmp_path / "cache"
  proc = train_py(*custom_args(tiny_backbone, files, "--config.train.epochs=1",
                               "--config.train.batch_size=32", "--config.train.eval_every_steps=0",
                               "--config.eval.batch_size=8"),
                  "--workdir", str(workdir), "--phase", "finetune",
                  env={**os.environ, "ADAPLER_JAX_CACHE_DIR": str(cache)})
  assert proc.returncode == 0, proc.stderr[-3000:]
  recorded = json.loads((workdir / "config.json").read_text())
  assert recorded["task"] == "custom"
  assert recorded["data"]["label_names"] == "neg,pos"  # read from train.csv, in class order.
  assert recorded["data"]["train_file"] == str(files / "train.csv")
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  dev = [r for r in rows if r["phase"] == "finetune" and "dev_metric" in r]
  assert len(dev) == 1 and dev[0]["step"] == 1  # one step of 32 rows, then dev (8 rows).
  assert dev[0]["dev_metric"] * 8 == round(dev[0]["dev_metric"] * 8)
  assert [p.name for p in (workdir / "finetune").iterdir() if p.name.isdigit()] == ["1"]
  assert any(cache.iterdir())  # compiled programs kept for the next run.


@pytest.mark.parametrize("override, want", [
    ("--config.data.train_file={files}/nope.csv",
     "error: custom train: expected file {files}/nope.csv not found; the folder has: "
     "dev.jsonl, train.csv; pass an existing .csv, .tsv or .jsonl file with "
     "--config.data.train_file"),
    ("--config.data.label_field=stars",
     "error: {name}/train.csv line 1: no column 'stars'; found columns ['review', "
     "'sentiment']; pass --config.data.text_fields and --config.data.label_field "
     "(load_file's text_fields= and label_field=) naming columns of the file"),
])
def test_cli_errors_are_one_line(files, override, want):
  proc = train_py(*custom_args("minilm", files, override.format(files=files)),
                  "--workdir", str(files / "run"))
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip() == want.format(files=files, name=files.name)
  assert not (files / "run").exists()


def custom_config(backbone, files, **data):
  c = tiny_config(backbone)
  c.task = "custom"
  c.data.train_subset = c.data.dev_subset = 0
  c.data.train_file, c.data.dev_file = "train.csv", "dev.jsonl"
  c.data.data_dir = str(files)
  c.data.text_fields, c.data.label_field = "review", "sentiment"
  c.data.update(data)
  return c


def test_prepare_reads_the_files(tiny_backbone, files):
  run = pipeline.prepare(custom_config(tiny_backbone, files, label_names="pos,neg"),
                         files / "run", record=False)
  assert run.task.label_names == ("pos", "neg") and run.num_labels == 2
  dev = run.dataset("dev")
  assert len(dev) == 8 and dev.labels.tolist() == [1, 0] * 4  # names give the class order.
  assert len(run.dataset("test")) == 8  # no test_file: the dev file,
  assert run.test_is_dev()  # which evaluate.py --split test says it read.
  (files / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reviews(5)))
  with_test = pipeline.prepare(custom_config(tiny_backbone, files, label_names="pos,neg",
                                             test_file="test.jsonl"), files / "run", record=False)
  assert not with_test.test_is_dev()
  assert len(with_test.dataset("test")) == 5  # the test file, not the dev file.


@pytest.mark.parametrize("data, want", [
    ({"text_fields": "title", "label_names": "neg,pos"}, "train.csv line 1: no column "
     "'title'; found columns ['review', 'sentiment']; pass --config.data.text_fields"),
    ({"label_names": "neg,positive"}, "train.csv line 3: label 'pos' is not one of ['neg', "
     "'positive']; fix the label or pass --config.data.label_names (load_file's "
     "label_names=)"),
    ({"dev_file": ""}, "task custom needs data.dev_file; pass --config.data.dev_file=PATH"),
    ({"test_file": "nope.csv"}, "nope.csv"),
    ({"text_fields": "a,b,c"}, "config data.text_fields 'a,b,c' must name one text field or "
     "two for a pair"),
    ({"metric": "auc"}, "config data.metric 'auc' is not one of accuracy, f1"),
    ({"label_names": "neg,pos,neg"}, "config data.label_names 'neg,pos,neg' must name each "
     "class once, with no empty name, e.g. --config.data.label_names=neg,pos"),
    ({"label_names": "neg,,pos"}, "config data.label_names 'neg,,pos' must name each class once"),
])
def test_bad_custom_configs(tiny_backbone, files, data, want):
  config = custom_config(tiny_backbone, files, **data)
  with pytest.raises((UserError, DataError)) as err:
    run = pipeline.prepare(config, files / "run")
    run.dataset("dev")
  assert want in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name, text, field, want", [
    ("empty.jsonl", "", "dev_file", "empty.jsonl: no data rows; add data rows or pass "
     "another file"),
    ("header.csv", "review,sentiment\n", "dev_file", "header.csv: no data rows; add data "
     "rows or pass another file"),
    ("empty.csv", "", "train_file", "empty.csv line 1: the first line is empty, so there is "
     "no header row; write the column names on the first line, then the rows"),
    ("blank.csv", "\nreview,sentiment\n", "train_file", "blank.csv line 1: the first line is "
     "empty, so there is no header row"),
])
def test_a_custom_file_without_rows_says_so(tiny_backbone, files, name, text, field, want):
  (files / name).write_text(text)
  config = custom_config(tiny_backbone, files, **{field: name})
  with pytest.raises(DataError) as err:
    pipeline.prepare(config, files / "run")
  assert f"/{want}" in str(err.value) and "\n" not in str(err.value)
  assert not (files / "run" / "config.json").exists()


def test_files_need_task_custom(tiny_backbone, files):
  config = tiny_config(tiny_backbone)
  config.data.train_file = "train.csv"
  with pytest.raises(UserError, match=r"config data.train_file is set but task is 'demo'; "
                     r"pass --config.task=custom"):
    pipeline.prepare(config, files / "run")


@pytest.mark.parametrize("name, text, line", [
    ("null.jsonl", '{"review": "good", "sentiment": "pos"}\n{"review": "bad", "sentiment": null}\n',
     2),
    ("blank.csv", "review,sentiment\ngood,pos\nbad,\n", 3),
])
def test_a_row_without_a_label_is_one_line(tiny_backbone, files, name, text, line):
  """A null or empty label was read as a class ("None", or "" which then failed as a bad
  data.label_names the user never passed)."""
  (files / name).write_text(text)
  with pytest.raises(DataError) as err:
    pipeline.prepare(custom_config(tiny_backbone, files, train_file=name), files / "run")
  assert str(err.value).endswith(f"/{name} line {line}: empty label (column 'sentiment'); "
                                 "give every row a label, or remove the row")
  assert not (files / "run" / "config.json").exists()


def test_an_inferred_label_with_a_comma_is_one_line(tiny_backbone, files):
  """data.label_names separates classes by commas: 'neg, mild' would become two classes."""
  (files / "comma.csv").write_text('review,sentiment\ngood,pos\nmeh,"neg, mild"\n')
  with pytest.raises(UserError) as err:
    pipeline.prepare(custom_config(tiny_backbone, files, train_file="comma.csv"), files / "run")
  assert str(err.value).endswith("/comma.csv: label 'neg, mild' contains a comma, which "
                                 "data.label_names cannot hold; rename that class in the data "
                                 "files")
  assert not (files / "run" / "config.json").exists()


def test_class_indices_that_skip_a_class_are_warned_about(tiny_backbone, files, caplog):
  """Labels 1..2 (AG News style, starting at 1) give 3 classes, class 0 empty: a warning."""
  (files / "from1.csv").write_text("review,sentiment\ngood,2\nbad,1\nfine,2\n")
  with caplog.at_level(logging.WARNING):
    run = pipeline.prepare(custom_config(tiny_backbone, files, train_file="from1.csv",
                                         dev_file="from1.csv"), files / "run", record=False)
  assert run.task.label_names == ("0", "1", "2")
  assert ("label column 'sentiment' holds class indices up to 2, but never 0; the model gets 3 "
          "classes") in caplog.text
