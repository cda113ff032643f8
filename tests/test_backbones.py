"""Every supported checkpoint family against Hugging Face PyTorch, with padding in the batch.

Each case builds a tiny HF model with seeded weights, saves it with `save_pretrained`, loads
it through `weights.load_encoder` and compares `adapler_jax.encode` with HF's
`last_hidden_state` at the real positions. Without torch the same weights are rebuilt from
the key list in `golden/backbones.json` and compared with the stored HF outputs
(`golden/backbones.npz`, written by `python -m tests.golden.make_backbones`).

Then the families' differences reach both methods: AdapLeR (soft == hard, the packed engine)
and LAT (masked == gather) on tiny RoBERTa, DistilBERT and ELECTRA encoders.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import adapler_jax
from adapler_jax import weights
from adapler_jax.data.tokenize import TokenizedDataset
from adapler_jax.infer import AdaptiveEngine, FullLengthEngine, per_example_run
from adapler_jax.models import adapler, lat
from adapler_jax.models.bert import EncoderConfig, attention_bias_from_mask
from adapler_jax.models.heads import SequenceClassifier
from adapler_jax.reduce import lengths as lat_lengths
from adapler_jax.reduce.significance import SelectionFlags
from adapler_jax.train import classifier

GOLDEN = Path(__file__).parent / "golden"
HAVE_TORCH = importlib.util.find_spec("torch") is not None
SEQ, LENGTHS = 10, (10, 6, 3)
_SIZE = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=24, max_position_embeddings=24)
_ROBERTA = dict(_SIZE, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                max_position_embeddings=26)
# name -> (HF config class, its fields, HF model class); task models carry the prefix.
CASES = {
    "bert": ("BertConfig", _SIZE, "BertModel"),
    "roberta": ("RobertaConfig", _ROBERTA, "RobertaModel"),  # no `roberta.`: the old bug.
    "roberta-prefixed": ("RobertaConfig", _ROBERTA, "RobertaForSequenceClassification"),
    "xlm-roberta": ("XLMRobertaConfig", _ROBERTA, "XLMRobertaForSequenceClassification"),
    "distilbert": ("DistilBertConfig", dict(vocab_size=40, dim=16, n_layers=2, n_heads=4,
                                            hidden_dim=24, max_position_embeddings=24),
                   "DistilBertModel"),
    "electra": ("ElectraConfig", dict(_SIZE, embedding_size=8), "ElectraModel"),
    "electra-discriminator": ("ElectraConfig", _SIZE, "ElectraForPreTraining"),
}


# ----------------------------------------------------------------------------- helpers


def seeded_state(shapes: dict[str, list[int]], seed: int) -> dict[str, np.ndarray]:
  """Random float32 tensors for every key (sorted), the same with or without torch."""
  rng = np.random.default_rng(seed)
  return {k: rng.normal(0.0, 0.5, shapes[k]).astype(np.float32) for k in sorted(shapes)}


def make_batch(pad_id: int, with_types: bool, seed: int = 0) -> dict[str, np.ndarray]:
  """Right-padded ids (3 rows of `LENGTHS`) padded with `pad_id`; type 1 from position 5."""
  rng = np.random.default_rng(seed)
  mask = (np.arange(SEQ)[None] < np.asarray(LENGTHS)[:, None]).astype(np.int32)
  ids = np.where(mask, rng.integers(3, _SIZE["vocab_size"], (len(LENGTHS), SEQ)), pad_id)
  types = (np.arange(SEQ)[None] >= 5) & mask.astype(bool) & with_types
  return {"input_ids": ids.astype(np.int32), "attention_mask": mask,
          "token_type_ids": types.astype(np.int32)}


def hf_model(name: str):
  import transformers  # pylint: disable=g-import-not-at-top
  config_cls, fields, model_cls = CASES[name]
  return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**fields)).eval()


def hf_inputs(model, batch):
  """The HF call's inputs: DistilBERT takes no token types."""
  keys = ["input_ids", "attention_mask"]
  if getattr(model.config, "type_vocab_size", 0) > 1:
    keys.append("token_type_ids")
  return keys


def live_case(name: str, directory: Path, seed: int):
  """Seeded HF model saved to `directory`; returns (batch, HF outputs, shapes): outputs
  `last_hidden_state`, and `logits` for sequence classifiers."""
  import torch  # pylint: disable=g-import-not-at-top
  model = hf_model(name)
  shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
  state = seeded_state(shapes, seed)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  model.save_pretrained(directory)
  batch = make_batch(model.config.pad_token_id or 0, model.config.model_type in ("bert", "electra"))
  inputs = {k: torch.from_numpy(batch[k]).long() for k in hf_inputs(model, batch)}
  with torch.no_grad():
    outputs = {"last_hidden_state": model.base_model(**inputs).last_hidden_state.numpy()}
    if "ForSequenceClassification" in type(model).__name__:
      outputs["logits"] = model(**inputs).logits.numpy()
  return batch, outputs, shapes


def golden_case(name: str, directory: Path):
  """The stored case rebuilt in `directory`; returns (batch, HF outputs)."""
  spec = json.loads((GOLDEN / "backbones.json").read_text())[name]
  arrays = np.load(GOLDEN / "backbones.npz")
  directory.mkdir(parents=True)
  (directory / "config.json").write_text(json.dumps(spec["config"]))
  save_file(seeded_state(spec["shapes"], spec["seed"]), str(directory / "model.safetensors"))
  batch = {k: arrays[f"{name}/{k}"] for k in ("input_ids", "attention_mask", "token_type_ids")}
  outputs = {k: arrays[f"{name}/{k}"] for k in ("last_hidden_state", "logits")
             if f"{name}/{k}" in arrays}
  return batch, outputs


def max_diff_at_real(hidden, expected, mask) -> float:
  mask = np.asarray(mask).astype(bool)
  return float(np.abs(np.asarray(hidden)[mask] - np.asarray(expected)[mask]).max())


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", list(CASES))
def test_parity_with_hugging_face(name, tmp_path):
  seed = list(CASES).index(name)
  directory = tmp_path / name
  golden_batch, golden = (None, None)
  if HAVE_TORCH:
    batch, expected, _ = live_case(name, directory, seed)
    golden_batch, golden = golden_case(name, tmp_path / "golden")
    golden = golden["last_hidden_state"]
  else:
    batch, expected = golden_case(name, directory)
  expected = expected["last_hidden_state"]
  cfg, params = weights.load_encoder(str(directory))
  hidden = adapler_jax.encode(cfg, params, batch["input_ids"], batch["attention_mask"],
                              batch["token_type_ids"])
  assert hidden.shape == (len(LENGTHS), SEQ, cfg.hidden_size)
  assert max_diff_at_real(hidden, expected, batch["attention_mask"]) <= 1e-5
  if golden is not None:  # the stored outputs still are what HF computes.
    for k, v in batch.items():
      np.testing.assert_array_equal(golden_batch[k], v)
    assert max_diff_at_real(golden, expected, batch["attention_mask"]) <= 1e-5


@pytest.mark.parametrize("name", ["roberta-prefixed", "xlm-roberta"])
def test_roberta_classification_head_loads_as_classification_head(name, tmp_path):
  """RoBERTa's head (dense, tanh, out_proj on <s>) is `ClassificationHead`: logits match."""
  seed = list(CASES).index(name)
  batch, expected = (live_case(name, tmp_path, seed) if HAVE_TORCH
                     else golden_case(name, tmp_path / "g"))[:2]
  directory = tmp_path if HAVE_TORCH else tmp_path / "g"
  cfg, _ = weights.load_encoder(str(directory))
  params, head = weights.convert_state_dict(load_file(str(directory / "model.safetensors")), cfg)
  logits, _ = SequenceClassifier(cfg, 2).apply(
      {"params": {"bert": params, "head": head}}, batch["input_ids"], batch["token_type_ids"],
      attention_bias_from_mask(batch["attention_mask"]))
  assert np.abs(np.asarray(logits) - expected["logits"]).max() <= 1e-5


@pytest.mark.parametrize("name", ["bert", "roberta-prefixed", "distilbert", "electra"])
def test_to_hf_state_dict_writes_the_checkpoint_back(name, tmp_path):
  directory = tmp_path / name
  if HAVE_TORCH:
    live_case(name, directory, seed=0)
  else:
    golden_case(name, directory)
  cfg, params = weights.load_encoder(str(directory))
  saved = load_file(str(directory / "model.safetensors"))
  state = weights.to_hf_state_dict(params, model_type=cfg.model_type)
  prefix = {"bert": "bert.", "distilbert": "distilbert.", "electra": "electra."}.get(name, "")
  for key, value in state.items():  # base models are saved without their prefix.
    np.testing.assert_array_equal(value, saved[key if key in saved else key[len(prefix):]])
  back, _ = weights.convert_state_dict(state, cfg)
  jax.tree.map(np.testing.assert_array_equal, back, params)


@pytest.mark.parametrize("name", ["distilbert", "electra"])
def test_a_head_unlike_the_tanh_pooler_is_refused_by_family(name, tmp_path):
  """DistilBERT's and ELECTRA's classifier heads (ReLU, GELU) are not imported: one line
  that says so (was "has no sequence-classification head; pass a
  *ForSequenceClassification checkpoint", for exactly such a checkpoint)."""
  golden_case(name, tmp_path / name)
  cfg, _ = weights.load_encoder(str(tmp_path / name))
  with pytest.raises(weights.WeightsError, match=f"^{re.escape(str(tmp_path / name))}: a "
                     f"fine-tuned {name} head \\(.*\\) is not the tanh pooler head the models "
                     r"here have, and is not imported \(bert, roberta, xlm-roberta heads are\); "
                     "fine-tune from its encoder instead: drop train.init_from_hf$"):
    weights.load_classifier(str(tmp_path / name), cfg, 2)


def test_roberta_positions_start_after_padding(tmp_path):
  """Before: a RoBERTa saved without `roberta.` loaded as a BERT, positions from 0, wrong by
  far more than rounding. After: `position_offset` = pad_token_id + 1, as HF."""
  if HAVE_TORCH:
    batch, expected, _ = live_case("roberta", tmp_path / "r", seed=1)
  else:
    batch, expected = golden_case("roberta", tmp_path / "r")
  expected = expected["last_hidden_state"]
  cfg, params = weights.load_encoder(str(tmp_path / "r"))
  assert (cfg.model_type, cfg.position_offset, cfg.type_vocab_size) == ("roberta", 2, 1)
  as_bert = EncoderConfig(**{**cfg.__dict__, "position_offset": 0})
  wrong = adapler_jax.encode(as_bert, params, batch["input_ids"], batch["attention_mask"])
  right = adapler_jax.encode(cfg, params, batch["input_ids"], batch["attention_mask"])
  assert max_diff_at_real(wrong, expected, batch["attention_mask"]) > 0.1
  assert max_diff_at_real(right, expected, batch["attention_mask"]) <= 1e-5


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("model_type", ["deberta-v2", "modernbert"])
def test_unsupported_model_type_is_one_line(model_type, tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type,
                                                    "hidden_size": 16}))
  save_file({"embeddings.word_embeddings.weight": np.zeros((4, 16), np.float32)},
            str(tmp_path / "model.safetensors"))
  with pytest.raises(weights.WeightsError) as e:
    weights.load_backbone(str(tmp_path))
  message = str(e.value)
  assert "\n" not in message
  assert f"model_type '{model_type}' is not supported" in message
  assert "supported: bert, roberta, xlm-roberta, distilbert, electra" in message


def test_missing_tokenizer_is_one_line(tmp_path):
  """transformers 5 would build an empty tokenizer from config.json alone."""
  if HAVE_TORCH:
    live_case("distilbert", tmp_path, seed=0)
  else:
    golden_case("distilbert", tmp_path / "d")
    tmp_path = tmp_path / "d"
  with pytest.raises(weights.WeightsError, match=r"^no tokenizer in .*save_pretrained\(DIR\)$"):
    weights.load_backbone(str(tmp_path))


@pytest.mark.parametrize("named", [True, False])
def test_tokenizer_loads_as_auto_tokenizer_builds_it(named, tokenizer, tmp_path):
  """The class tokenizer_config.json names is imported alone (AutoTokenizer imports PyTorch
  when it is installed); without a named class, AutoTokenizer builds it. Either way it
  encodes pairs, offsets and overflow windows as AutoTokenizer's does."""
  transformers = pytest.importorskip("transformers")
  tokenizer.save_pretrained(str(tmp_path))
  if not named:
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    del config["tokenizer_class"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
  loaded = weights.load_tokenizer(tmp_path)
  auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  assert type(loaded) is type(auto) and loaded.is_fast
  questions = ["Who founded Glenford?", "Wér?"]
  contexts = ["Glenford is a town, founded in 1819 by Greta Moss. " * 3, "Ça va, naïve café."]
  kwargs = dict(truncation="only_second", max_length=24, stride=8,
                return_overflowing_tokens=True, return_offsets_mapping=True)
  got, want = loaded(questions, contexts, **kwargs), auto(questions, contexts, **kwargs)
  assert len(want["input_ids"]) > len(questions)  # windows overflowed.
  for key in want:
    assert got[key] == want[key], key


def test_loading_a_backbone_imports_no_pytorch():
  """A CLI start: the embedded backbone and its tokenizer load without importing torch."""
  if not HAVE_TORCH:
    pytest.skip("torch is not installed: there is nothing to keep from importing")
  code = ("import sys; from adapler_jax.weights import load_backbone; load_backbone('minilm'); "
          "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=300, check=True)
  assert proc.stdout.strip() == "[]"


def test_revision_needs_a_hub_id(tmp_path):
  with pytest.raises(weights.WeightsError, match="pins a hub checkpoint"):
    weights.load_backbone(str(tmp_path), revision="v1")


def test_revision_reaches_the_hub(monkeypatch):
  calls = []

  def fake_download(repo_id, revision=None, allow_patterns=None):
    calls.append((repo_id, revision))
    raise OSError("offline")

  import huggingface_hub  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
  with pytest.raises(weights.WeightsError, match="'org/model' at revision 'abc123'"):
    weights.load_backbone("org/model", revision="abc123")
  assert calls == [("org/model", "abc123")]


# ----------------------------------------------------------------------------- both methods

FAMILIES = {
    "roberta": EncoderConfig.tiny(model_type="roberta", type_vocab_size=1, pad_token_id=1,
                                  position_offset=2, max_position_embeddings=34),
    "distilbert": EncoderConfig.tiny(model_type="distilbert", type_vocab_size=0,
                                     max_position_embeddings=32),
    "electra": EncoderConfig.tiny(model_type="electra", embedding_size=16,
                                  max_position_embeddings=32),
}
T = 16


def family_batch(enc: EncoderConfig, lengths, seed=0):
  rng = np.random.default_rng(seed)
  mask = np.arange(T)[None] < np.asarray(lengths)[:, None]
  ids = np.where(mask, rng.integers(5, enc.vocab_size, (len(lengths), T)), enc.pad_token_id)
  ids[:, 0] = 0  # [CLS] / <s>
  return {"input_ids": ids.astype(np.int32), "token_type_ids": np.zeros((len(lengths), T),
                                                                          np.int32),
          "attention_mask": mask, "labels": np.arange(len(lengths)) % 3}


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_adapler_soft_at_huge_lambda_equals_hard_removal(family):
  """The padded batch forward and the unpadded per-example forward agree, tokens dropped."""
  cfg = adapler.AdapLeRConfig(FAMILIES[family], num_labels=3)
  params = adapler.init(jax.random.key(0), cfg)
  model = dict(params["model"])
  for l in range(cfg.num_layers):
    model[f"predictors_{l}"] = jax.tree.map(lambda w: w * 30.0, model[f"predictors_{l}"])
  params = {"model": model, "speed": {**params["speed"], "eta": jnp.full((2,), 0.5)}}
  lengths = (9,)  # padded to T.
  batch = family_batch(cfg.encoder, lengths)
  logits, trace = adapler.soft_forward(cfg, params, batch, 1e20)
  soft_kept = np.asarray(jnp.sum(trace["keep"] > 0.5, axis=-1)).T
  dropped = False
  for i, n in enumerate(lengths):
    hard = adapler.hard_forward(cfg, params, batch["input_ids"][i, :n])
    np.testing.assert_array_equal(hard.kept_counts, soft_kept[i])
    np.testing.assert_allclose(hard.logits, logits[i], atol=1e-4)
    dropped |= hard.kept_counts[-1] < n
  assert dropped


def test_packed_engine_positions_equal_the_padded_forward():
  """Packed rows pass their own 0-based positions; RoBERTa's offset applies to them too."""
  enc = FAMILIES["roberta"]
  cfg = adapler.AdapLeRConfig(enc, num_labels=2)
  params = adapler.init(jax.random.key(1), cfg)
  lengths = np.array([16, 3, 4, 5, 3, 2, 12, 4], np.int32)
  batch = family_batch(enc, lengths, seed=2)
  data = TokenizedDataset(batch["input_ids"], batch["token_type_ids"], lengths,
                          np.zeros(len(lengths), np.int32), [str(i) for i in lengths], "tiny",
                          pad_id=enc.pad_token_id)
  engine = FullLengthEngine(cfg, params, batch_size=8, max_length=T, buckets=(4, 8, 16),
                            folds=(2, 4))
  result = engine.run(data)
  assert result.packed_batches.any()
  model = params["model"]
  want, _ = SequenceClassifier(enc, 2).apply(
      {"params": {"bert": model["bert"], "head": model["head"]}}, batch["input_ids"],
      batch["token_type_ids"], attention_bias_from_mask(batch["attention_mask"]))
  np.testing.assert_allclose(result.logits, want, atol=1e-5)


def test_adaptive_engine_equals_per_example_on_roberta():
  """AdapLeR's batched engine on RoBERTa, tokens dropped and survivors packed several to a
  row: each kept token keeps its own position (after the padding offset), as alone."""
  enc = FAMILIES["roberta"]
  cfg = adapler.AdapLeRConfig(enc, num_labels=2)
  params = adapler.init(jax.random.key(3), cfg)
  model = dict(params["model"])
  for l in range(cfg.num_layers):
    model[f"predictors_{l}"] = jax.tree.map(lambda w: w * 2.0, model[f"predictors_{l}"])
  params = {"model": model, "speed": {**params["speed"], "eta": jnp.full((2,), 0.2)}}
  lengths = np.array([16, 9, 13, 5, 16, 7, 11, 14, 6, 15], np.int32)
  batch = family_batch(enc, lengths, seed=4)
  data = TokenizedDataset(batch["input_ids"], batch["token_type_ids"], lengths,
                          np.zeros(len(lengths), np.int32), [str(i) for i in lengths], "tiny",
                          pad_id=enc.pad_token_id)
  got = AdaptiveEngine(cfg, params, batch_size=4, max_length=T, buckets=(8, 16),
                       folds=(2, 4)).run(data, return_rationales=True)
  want = per_example_run(cfg, params, data)
  assert (want.kept_counts[:, -1] < lengths).all() and len(np.unique(want.kept_counts)) >= 4
  assert got.packed_batches.any()
  np.testing.assert_array_equal(got.kept_counts, want.kept_counts)
  np.testing.assert_allclose(got.logits, want.logits, atol=1e-4, rtol=0)
  for g, w in zip(got.kept_positions, want.kept_positions):
    for a, b in zip(g, w):
      np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_lat_masked_path_equals_gather_path(family):
  enc = FAMILIES[family]
  params = classifier.init_classifier(jax.random.key(0), enc, 3)
  batch = family_batch(enc, (16, 12, 9, 5))
  plain = classifier.classifier_logits(enc, 3, params, batch)
  full, _ = lat.masked_forward(enc, 3, params, batch, None, base=T)
  np.testing.assert_allclose(full, plain, atol=1e-6)
  config = (14, 11)
  masked, trace = lat.masked_forward(enc, 3, params, batch, jnp.asarray(config), base=T)
  n, base = batch["attention_mask"].sum(1), SelectionFlags().length_base
  counts = lat_lengths.keep_counts(np.asarray(config), n, T, base)
  widths = tuple(int(w) for w in lat_lengths.real_counts(config, n, T, base).max(axis=0))
  gathered, _ = lat.gather_forward(enc, 3, params, batch["input_ids"], batch["token_type_ids"],
                                   jnp.asarray(n), jnp.asarray(counts), widths)
  np.testing.assert_allclose(masked, gathered, atol=1e-4)
  assert (np.asarray(trace["lengths"])[-1] < n).any()  # the config did drop tokens.
