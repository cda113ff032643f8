"""Encoder and weight conversion: parity with Hugging Face PyTorch BERT."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from adapler_jax.models import bert
from adapler_jax.models.bert import Bert, EncoderConfig, attention_bias_from_mask
from adapler_jax.models.heads import SequenceClassifier
from adapler_jax import weights

GOLDEN = "tests/golden/minilm_hidden.npz"


def _run(cfg, params, batch):
  bias = attention_bias_from_mask(batch["attention_mask"])
  return Bert(cfg).apply({"params": params}, batch["input_ids"], batch["token_type_ids"], bias)


@pytest.fixture(scope="module")
def minilm():
  return weights.load_backbone("minilm")


def test_minilm_matches_golden_hf_outputs(minilm):
  cfg, params, tokenizer = minilm
  golden = np.load(GOLDEN)
  batch = {k: golden[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
  hidden, aux = _run(cfg, params, batch)
  assert len(aux["hidden_states"]) == cfg.num_layers + 1
  diff = np.abs(np.asarray(hidden) - golden["last_hidden_state"])
  assert diff.max() <= 1e-4, diff.max()


def test_tokenizer_reproduces_golden_ids(minilm):
  from tests.golden.make_bert_golden import SENTENCES
  golden = np.load(GOLDEN)
  ids = minilm.tokenizer(SENTENCES, padding="max_length", max_length=24)["input_ids"]
  np.testing.assert_array_equal(np.asarray(ids), golden["input_ids"][: len(SENTENCES)])


def test_minilm_config(minilm):
  cfg = minilm.config
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.intermediate_size) == (6, 384, 12, 1536)


def test_bfloat16_compute_close_to_float32(minilm):
  cfg, params, _ = minilm
  golden = np.load(GOLDEN)
  batch = {k: golden[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
  hidden32, _ = _run(cfg, params, batch)
  hidden16, _ = _run(EncoderConfig(**{**cfg.__dict__, "dtype": "bfloat16"}), params, batch)
  assert hidden16.dtype == jnp.bfloat16
  mask = batch["attention_mask"].astype(bool)
  cos = np.sum(np.asarray(hidden16, np.float32) * np.asarray(hidden32), -1) / (
      np.linalg.norm(np.asarray(hidden16, np.float32), axis=-1) * np.linalg.norm(hidden32, axis=-1))
  assert cos[mask].min() > 0.99


def test_padding_does_not_change_valid_outputs():
  cfg = EncoderConfig.tiny()
  model = Bert(cfg)
  ids = jax.random.randint(jax.random.key(1), (1, 6), 1, cfg.vocab_size)
  params = model.init(jax.random.key(0), ids, ids * 0, jnp.zeros((1, 6)))["params"]
  short, _ = model.apply({"params": params}, ids, ids * 0, jnp.zeros((1, 6)))
  padded_ids = jnp.pad(ids, ((0, 0), (0, 4)))
  mask = jnp.arange(10)[None] < 6
  long, _ = model.apply({"params": params}, padded_ids, padded_ids * 0,
                        attention_bias_from_mask(mask))
  np.testing.assert_allclose(long[:, :6], short, atol=1e-5)


def test_a_mask_where_the_bias_goes_is_one_line():
  """Read as a bias, a 0/1 mask adds 1 to the kept keys and attends to padding: refused."""
  from adapler_jax.errors import InputError  # pylint: disable=g-import-not-at-top
  cfg = EncoderConfig.tiny()
  ids = jnp.ones((1, 4), jnp.int32)
  mask = jnp.array([[True, True, True, False]])
  for wrong in (mask, mask.astype(jnp.int32)):
    with pytest.raises(InputError, match=r"^attention_bias is (bool|int32), an attention mask"):
      SequenceClassifier(cfg, 2).init(jax.random.key(0), ids, ids, wrong)
  params = SequenceClassifier(cfg, 2).init(jax.random.key(0), ids, ids,
                                           attention_bias_from_mask(mask))
  assert jax.tree.leaves(params)


def test_convert_rejects_wrong_shapes():
  cfg = EncoderConfig.tiny()
  state = {"embeddings.word_embeddings.weight": np.zeros((3, 3), np.float32)}
  with pytest.raises(weights.WeightsError, match="missing"):
    weights.convert_state_dict(state, cfg)


def test_bin_only_checkpoint_names_the_fix(tmp_path):
  (tmp_path / "config.json").write_text('{"model_type": "bert"}')
  (tmp_path / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(weights.WeightsError, match=r"only PyTorch \.bin.*safe_serialization=True"):
    weights.load_backbone(str(tmp_path))


def test_missing_directory_is_one_clear_line(tmp_path):
  with pytest.raises(weights.WeightsError, match="does not exist"):
    weights.load_backbone(str(tmp_path / "nope"))


def test_offline_hub_says_pass_a_local_directory(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(weights.WeightsError, match="pass a local directory"):
    weights.load_backbone("some-org/some-bert-model")


# Live comparison against Hugging Face PyTorch, when torch is installed.

def _random_hf_model(kind):
  torch = pytest.importorskip("torch")
  import transformers
  torch.manual_seed(0)
  hf_cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=37,
                                   max_position_embeddings=64, type_vocab_size=2,
                                   layer_norm_eps=1e-7, num_labels=3)
  model = getattr(transformers, kind)(hf_cfg).eval()
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  return torch, hf_cfg, model, state


def _random_batch(vocab, lengths, seq=12):
  rng = np.random.default_rng(0)
  ids = rng.integers(1, vocab, (len(lengths), seq)).astype(np.int32)
  mask = (np.arange(seq)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
  types = ((np.arange(seq)[None] >= 5) & mask.astype(bool)).astype(np.int32)
  return {"input_ids": ids * mask, "token_type_ids": types, "attention_mask": mask}


def test_live_parity_with_hf_bert_model():
  torch, hf_cfg, model, state = _random_hf_model("BertModel")
  cfg = EncoderConfig.from_hf(hf_cfg)
  params, head = weights.convert_state_dict(state, cfg)
  batch = _random_batch(hf_cfg.vocab_size, [12, 7, 3])
  with torch.no_grad():
    ref = model(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()})
  hidden, _ = _run(cfg, params, batch)
  mask = batch["attention_mask"].astype(bool)
  np.testing.assert_allclose(np.asarray(hidden)[mask], ref.last_hidden_state.numpy()[mask],
                             atol=1e-5)


def test_live_parity_with_hf_sequence_classifier():
  torch, hf_cfg, model, state = _random_hf_model("BertForSequenceClassification")
  cfg = EncoderConfig.from_hf(hf_cfg)
  params, head = weights.convert_state_dict(state, cfg)
  assert head is not None
  batch = _random_batch(hf_cfg.vocab_size, [12, 4])
  with torch.no_grad():
    ref = model(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}).logits
  logits, _ = SequenceClassifier(cfg, 3).apply(
      {"params": {"bert": params, "head": head}}, batch["input_ids"], batch["token_type_ids"],
      attention_bias_from_mask(batch["attention_mask"]))
  np.testing.assert_allclose(np.asarray(logits), ref.numpy(), atol=1e-5)


def test_gelu_is_the_exact_one():
  x = jnp.linspace(-12.0, 12.0, 2001)
  np.testing.assert_allclose(bert.gelu(x), jax.nn.gelu(x, approximate=False), atol=2e-6)
  assert bert.gelu(jnp.bfloat16(1.0)).dtype == jnp.bfloat16
