"""AdapLeR model, losses and train step on a tiny random model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapler_jax.models import adapler
from adapler_jax.models.bert import EncoderConfig
from adapler_jax.models.heads import ClassifierConfig
from adapler_jax.reduce import adapler as reduce_adapler
from adapler_jax.train import adapler_step, losses, optim
from tests import jax_compat

CFG = adapler.AdapLeRConfig(EncoderConfig.tiny(), num_labels=3)
L = CFG.num_layers


def make_batch(lengths, seq=None, seed=0):
  rng = np.random.default_rng(seed)
  seq = seq or max(lengths)
  mask = np.arange(seq)[None] < np.asarray(lengths)[:, None]
  ids = rng.integers(3, CFG.encoder.vocab_size, (len(lengths), seq)) * mask
  ids[:, 0] = 1  # [CLS]
  return {
      "input_ids": jnp.asarray(ids, jnp.int32),
      "token_type_ids": jnp.zeros(ids.shape, jnp.int32),
      "attention_mask": jnp.asarray(mask),
      "labels": jnp.asarray(rng.integers(0, CFG.num_labels, len(lengths)), jnp.int32),
      "saliency": jnp.asarray(rng.random(ids.shape) * mask, jnp.float32),
  }


def init_params(seed=0, cp_scale=1.0, eta=0.25):
  params = adapler.init(jax.random.key(seed), CFG)
  model = dict(params["model"])
  for l in range(L):  # spread the predictor scores so few sit near the cutoff.
    model[f"predictors_{l}"] = jax.tree.map(lambda w: w * cp_scale, model[f"predictors_{l}"])
  speed = {**params["speed"], "eta": jnp.full((L,), eta, jnp.float32)}
  return {"model": model, "speed": speed}


# --------------------------------------------------------------------------- Eq. 4

@pytest.mark.parametrize("s, delta, lam, beta, expected", [
    (0.10, 0.25, 10.0, 0.1, 40 * (0.10 - 0.25) - 0.01),      # below the cutoff: -6.01
    (0.50, 0.25, 10.0, 0.1, (0.50 - 1) * 0.01 / 0.75),       # above: -0.0066667
    (0.25, 0.25, 10.0, 0.1, -0.01),                          # at the cutoff both give -beta/lam
    (0.01, 0.20, 1000.0, 0.1, 5000 * (0.01 - 0.20) - 1e-4),  # -950.0001
    (0.90, 0.10, 3.0, 0.05, (0.90 - 1) * (0.05 / 3) / 0.9),  # -0.00185185
    (0.00, 0.10, 1e6, 0.1, -1e4),                            # clipped at -1e4
    (1.00, 0.10, 10.0, 0.1, 0.0),                            # S = 1 keeps fully
    # lam^2 < beta delta / (1 - delta): the gentle line is the steeper one, and the
    # branch still follows S against delta (a min of the two would give -12 and -9.998).
    (0.40, 0.50, 0.01, 0.1, 0.02 * (0.40 - 0.50) - 10),      # below: -10.002
    (0.60, 0.50, 0.01, 0.1, (0.60 - 1) * 10 / 0.5),          # above: -8
])
def test_soft_removal_edit_matches_hand_computed(s, delta, lam, beta, expected):
  got = adapler.soft_removal_edit(jnp.float32(s), jnp.float32(delta), lam, beta)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_edit_is_zero_for_cls_and_padding():
  batch = make_batch([6, 3, 8])
  _, trace = adapler.soft_forward(CFG, init_params(cp_scale=5.0), batch, 10.0)
  edit = np.asarray(trace["edit"])
  pad = ~np.asarray(batch["attention_mask"])
  assert np.all(edit[:, :, 0] == 0)
  assert np.all(edit[:, pad] == 0)
  assert np.all(edit[:, ~pad][:, 1:] <= 0) and np.any(edit < -1e-3)


# --------------------------------------------------------------------------- soft == hard

@pytest.mark.parametrize("eta", [0.1, 0.5, 1.0])
def test_soft_at_huge_lambda_equals_hard_removal(eta):
  rng = np.random.default_rng(42)
  lengths = rng.integers(2, 24, 60)
  batch = make_batch(lengths, seq=24, seed=7)
  params = init_params(seed=3, cp_scale=30.0, eta=eta)
  logits, trace = adapler.soft_forward(CFG, params, batch, 1e20)
  soft_kept = np.asarray(jnp.sum(trace["keep"] > 0.5, axis=-1)).T  # (B, L)
  dropped_any = False
  for i, n in enumerate(lengths):
    hard = adapler.hard_forward(CFG, params, batch["input_ids"][i, :n])
    np.testing.assert_array_equal(hard.kept_counts, soft_kept[i])
    np.testing.assert_allclose(hard.logits, logits[i], atol=1e-4)
    assert np.argmax(hard.logits) == np.argmax(logits[i])
    dropped_any |= hard.kept_counts[-1] < n
  assert dropped_any  # the check means something only if tokens were dropped.


def test_hard_removal_invariants():
  params = init_params(seed=1, cp_scale=30.0, eta=1.0)
  ids = make_batch([20])["input_ids"][0]
  result = adapler.hard_forward(CFG, params, ids)
  previous = np.arange(20)
  for positions, scores in zip(result.kept_positions, result.scores):
    assert positions[0] == 0  # [CLS] is never dropped
    assert set(positions) <= set(previous) and np.all(np.diff(positions) > 0)
    assert len(scores) == len(previous) and abs(scores.sum() - 1) < 1e-5
    previous = positions


def test_soft_keeps_cls_and_never_padding():
  batch = make_batch([9, 2, 5], seq=12)
  _, trace = adapler.soft_forward(CFG, init_params(cp_scale=30.0, eta=1.0), batch, 1e6)
  keep = np.asarray(trace["keep"])
  assert np.all(keep[:, :, 0] == 1.0)
  assert np.all(keep[:, ~np.asarray(batch["attention_mask"])] == 0.0)


@pytest.mark.parametrize("lam", [1e3, 1e4])
def test_span_soft_removal_at_eta_one_keeps_a_token_and_no_nan(lam):
  """keep_cls=False (span QA), eta = 1, twelve layers: once the kept weights sum below 1,
  counting them as one token (as hard removal counts) keeps the cutoff at most 1, so the
  top-scoring token stays, as hard removal keeps it, and no keep weight turns NaN."""
  rng = np.random.default_rng(0)
  layers, rows, tokens = 12, 20, 40
  scores = [jnp.asarray(rng.normal(0, 2, (rows, tokens)), jnp.float32) for _ in range(layers)]
  policy = reduce_adapler.SoftRemoval(
      [lambda x, s=s: s for s in scores], jnp.ones(layers), lam, 0.1, jnp.ones(layers),
      keep_cls=False, restore=True)
  ctx = policy.initial(jnp.ones((rows, tokens), bool))
  for l in range(layers):
    _, ctx, record = policy.before_layer(l, jnp.zeros((rows, tokens, 8)), ctx)
    assert not np.isnan(np.asarray(ctx[0])).any(), l
    assert (np.asarray(record["lengths"]) > 0.9).all(), l


# --------------------------------------------------------------------------- losses

def test_cp_targets_restrict_and_amplify_cls():
  saliency = jnp.array([[1.0, 2.0, 3.0, 4.0, 0.0]])
  keep_in = jnp.array([[[1.0, 1.0, 0.0, 1.0, 0.0]]])
  target = losses.cp_targets(saliency, keep_in, jnp.array([3.0]))
  np.testing.assert_allclose(target[0, 0], np.array([3, 2, 0, 4, 0]) / 9.0, rtol=1e-6)


def test_cp_loss_is_layer_weighted_inclusive_kl():
  target = jnp.array([[[0.5, 0.5, 0.0]], [[0.2, 0.8, 0.0]]])
  pred = jnp.array([[[0.25, 0.5, 0.25]], [[0.5, 0.5, 0.0]]])
  kl0 = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.5)
  kl1 = 0.2 * np.log(0.2 / 0.5) + 0.8 * np.log(0.8 / 0.5)
  got = losses.cp_loss(jnp.log(jnp.maximum(pred, 1e-30)), target)
  np.testing.assert_allclose(got, 2 * kl0 + 1 * kl1, rtol=1e-5)


# --------------------------------------------------------------------------- theta

def _surrogate(params, batch, lam, phi):
  """L_CE + phi * L_LENGTH as a function of the dummy [CLS] multipliers theta_d."""
  def f(theta_d):
    logits, trace = adapler.soft_forward(CFG, params, batch, lam, theta_d=theta_d)
    return losses.cross_entropy(logits, batch["labels"]) + phi * losses.length_loss(
        trace["lengths"])
  return jax.jit(f)


def test_soft_forward_stays_in_float32_with_x64_enabled():
  """A researcher's `jax_enable_x64` does not turn the soft-removal trace into float64
  (the padding weights were a Python-float `where`, float64 under x64)."""
  with jax_compat.enable_x64(True):
    logits, aux = jax.jit(lambda p, b: adapler.soft_forward(CFG, p, b, 10.0))(
        init_params(), make_batch([10, 7, 5, 9]))
    dtypes = {k: v.dtype for k, v in aux.items() if jnp.issubdtype(v.dtype, jnp.floating)}
  assert logits.dtype == jnp.float32 and set(dtypes.values()) == {jnp.dtype(jnp.float32)}
  assert {"log_scores", "lengths", "edit"} <= dtypes.keys()


def test_theta_gradient_matches_finite_difference_and_is_divided_by_theta():
  with jax_compat.enable_x64(True):
    params = jax.tree.map(lambda x: x.astype(jnp.float64), init_params(cp_scale=5.0, eta=0.8))
    params["speed"]["theta"] = jnp.array([1.0, 2.5], jnp.float64)
    batch = make_batch([10, 7, 5, 9])
    batch["saliency"] = batch["saliency"].astype(jnp.float64)
    weights = adapler_step.LossWeights(gamma=0.1, phi=0.3)
    grads, aux = jax.jit(lambda p: adapler_step.adapler_grads(
        CFG, p, batch, 5.0, weights, deterministic=True))(params)
    f = _surrogate(params, batch, 5.0, weights.phi)
    h = 1e-6
    fd = np.array([(f(jnp.ones(L).at[l].add(h)) - f(jnp.ones(L).at[l].add(-h))) / (2 * h)
                   for l in range(L)])
    # The model computes in float32; the difference quotient is taken in float64.
    np.testing.assert_allclose(aux["theta_d_grad"], fd, rtol=1e-3, atol=1e-9)
    assert np.all(np.abs(fd[1:]) > 1e-6)
    np.testing.assert_allclose(grads["speed"]["theta"][1], fd[1] / 2.5, rtol=1e-3)
    np.testing.assert_allclose(grads["speed"]["theta"][1], aux["theta_d_grad"][1] / 2.5,
                               rtol=1e-6)
    assert grads["speed"]["theta"][0] == 0.0  # theta^0 is fixed at 1.


def test_theta_update_moves_against_the_gradient():
  params = init_params(cp_scale=5.0, eta=0.8)
  batch = make_batch([10, 7, 5, 9])
  weights = adapler_step.LossWeights(gamma=0.1, phi=0.3)
  opt = optim.adapler_optimizer(3e-5, 10)
  state = adapler_step.create_train_state(params, opt, jax.random.key(0))
  step = adapler_step.make_train_step(CFG, opt, weights, donate=False)
  # Dropout is on in the step; compare against gradients computed with the same rng.
  rng = state.step_key()
  grads, _ = jax.jit(lambda p: adapler_step.adapler_grads(
      CFG, p, batch, jnp.float32(5.0), weights, rng=rng))(params)
  new, _ = step(state, batch, 5.0)
  delta = np.asarray(new.params["speed"]["theta"] - params["speed"]["theta"])
  g = np.asarray(grads["speed"]["theta"])
  assert delta[0] == 0.0
  assert np.all(np.sign(delta[1:]) == -np.sign(g[1:])) and np.all(g[1:] != 0)


def test_warmup_schedule_ramps_then_decays_and_a_zero_fraction_starts_at_full_rate():
  ramp = optim.warmup_linear_decay(1e-3, 100, 0.06)
  assert [float(ramp(t)) for t in (0, 3, 6, 53, 100)] == pytest.approx(
      [0.0, 5e-4, 1e-3, 5e-4, 0.0])
  flat = optim.warmup_linear_decay(1e-3, 100, 0.0)
  assert [float(flat(t)) for t in (0, 50, 100)] == pytest.approx([1e-3, 5e-4, 0.0])
  assert float(optim.warmup_linear_decay(1e-3, 4, 0.06)(0)) == 0.0  # rounds to 0: one step.


# --------------------------------------------------------------------------- groups

def _two_steps(weights, weight_decay=0.1):
  """Two updates: the warmup schedule gives the model group lr 0 at step 0."""
  params = init_params(cp_scale=5.0, eta=0.5)
  opt = optim.adapler_optimizer(1e-3, 10, weight_decay=weight_decay)
  state = adapler_step.create_train_state(params, opt, jax.random.key(0))
  step = adapler_step.make_train_step(CFG, opt, weights, donate=False)
  for _ in range(2):
    state, _ = step(state, make_batch([10, 6, 3, 8]), 10.0)
  return params, state.params


def _changed(a, b):
  return [optim.path_str(p) for p, x in jax.tree_util.tree_flatten_with_path(
      jax.tree.map(lambda u, v: bool(jnp.any(u != v)), a, b))[0] if x]


def test_without_ce_and_length_terms_speed_params_do_not_move():
  before, after = _two_steps(adapler_step.LossWeights(gamma=1.0, phi=0.0, ce=0.0))
  assert not _changed(before["speed"], after["speed"])
  assert _changed(before["model"], after["model"])  # L_CP still trains the model.


def test_length_term_alone_never_changes_model_params():
  weights = adapler_step.LossWeights(gamma=0.0, phi=1.0, ce=0.0)
  params = init_params(cp_scale=5.0, eta=0.5)
  grads, _ = jax.jit(lambda p: adapler_step.adapler_grads(
      CFG, p, make_batch([10, 6, 3, 8]), jnp.float32(10.0), weights,
      rng=jax.random.key(0)))(params)
  assert all(bool(jnp.all(g == 0)) for g in jax.tree.leaves(grads["model"]))
  before, after = _two_steps(weights, weight_decay=0.0)
  assert not _changed(before["model"], after["model"])
  assert set(_changed(before["speed"], after["speed"])) == {"eta", "theta"}


def test_every_parameter_leaf_is_labelled():
  params = init_params()
  labels = optim.label_params(params, optim.ADAPLER_GROUPS)
  flat = jax.tree_util.tree_flatten_with_path(labels)[0]
  assert len(flat) == len(jax.tree.leaves(params))
  groups = {(optim.path_str(p).split("/")[1].split("_")[0], lab) for p, lab in flat}
  assert groups == {("bert", "model"), ("head", "model"), ("predictors", "predictors"),
                    ("eta", "speed"), ("theta", "speed")}
  with pytest.raises(ValueError, match="match no optimizer group"):
    optim.label_params({**params, "extra": jnp.zeros(2)}, optim.ADAPLER_GROUPS)


def test_eta_and_theta_stay_in_range():
  params = init_params(cp_scale=5.0, eta=0.02)
  params["speed"]["theta"] = jnp.full((L,), 2e-3)
  opt = optim.adapler_optimizer(3e-5, 10, speed_learning_rate=0.5)
  state = adapler_step.create_train_state(params, opt, jax.random.key(0))
  step = adapler_step.make_train_step(CFG, opt, adapler_step.LossWeights(0.1, 50.0))
  batch = make_batch([10, 6, 3, 8])
  for lam in (10.0, 100.0, 1000.0, 1e4):
    state, metrics = step(state, batch, lam)
    eta = np.asarray(metrics["eta"])
    assert np.all((eta >= 0.01) & (eta <= 1.0)) and np.all(np.asarray(metrics["theta"]) >= 1e-3)
    # eta = 1 with only [CLS] left puts delta at 1: the step must stay finite there.
    assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(state.params))
  assert np.any(eta == 1.0)  # a length weight this large pushes eta to the bound.


@pytest.mark.parametrize("frozen", [("speed",), ("speed", "predictors"), ("model",)])
def test_frozen_groups_keep_their_values(frozen):
  params = init_params(cp_scale=5.0, eta=0.3)
  opt = optim.adapler_optimizer(1e-3, 10, speed_learning_rate=0.5, warmup_fraction=0.0,
                                frozen=frozen)
  free = optim.adapler_optimizer(1e-3, 10, speed_learning_rate=0.5, warmup_fraction=0.0)
  state = adapler_step.create_train_state(params, opt, jax.random.key(0))
  # Same optimizer-state structure frozen or not: a run resumes either way.
  assert (jax.tree.structure(state.opt_state)
          == jax.tree.structure(adapler_step.create_train_state(params, free,
                                                                jax.random.key(0)).opt_state))
  step = adapler_step.make_train_step(CFG, opt, adapler_step.LossWeights(0.1, 5.0))
  for lam in (10.0, 100.0):
    state, _ = step(state, make_batch([10, 6, 3, 8]), lam)
  labels = optim.label_params(params, optim.ADAPLER_GROUPS)
  moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                       params, state.params)
  by_group = {}
  for label, changed in zip(jax.tree.leaves(labels), jax.tree.leaves(moved)):
    by_group.setdefault(label, []).append(changed)
  for group, changed in by_group.items():
    assert any(changed) == (group not in frozen), group


def test_unknown_frozen_group_is_refused():
  with pytest.raises(ValueError, match="unknown AdapLeR parameter groups \\['eta'\\]"):
    optim.adapler_optimizer(1e-3, 10, frozen=("eta",))


# --------------------------------------------------------------------------- compilation

def test_train_step_compiles_once_while_lambda_changes():
  compiles = []
  listen = lambda name, *_, **__: (compiles.append(name)
                                   if name.endswith("backend_compile_duration") else None)
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    _lambda_changes_without_compiling(compiles)
  finally:
    jax_compat.unregister_event_duration_listener(listen)


def _lambda_changes_without_compiling(compiles):
  opt = optim.adapler_optimizer(3e-5, 10)
  weights = adapler_step.LossWeights(5e-3, 5e-4)
  step = adapler_step.make_train_step(CFG, opt, weights)
  state = adapler_step.create_train_state(init_params(), opt, jax.random.key(0))
  batch = make_batch([10, 6, 3, 8])
  state, _ = step(state, batch, 10.0)  # compile (and its helpers) once.
  compiles.clear()
  for lam in (100.0, 1e3, np.float32(1e4), jnp.float32(1e5), 1e6):
    state, metrics = step(state, batch, lam)
  jax.block_until_ready(metrics)
  assert step.jitted._cache_size() == 1
  assert compiles == []


# --------------------------------------------------------------------------- initialisation

def test_from_finetuned_takes_encoder_and_head_and_keeps_predictors_and_speed():
  from adapler_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  from adapler_jax.pipeline.phases import with_finetuned  # pylint: disable=g-import-not-at-top
  fresh = init_params(seed=0)
  other = init_params(seed=1)["model"]
  finetuned = {"bert": other["bert"], "head": other["head"]}
  params = with_finetuned(fresh, finetuned)
  for part in ("bert", "head"):
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)),
                                     params["model"][part], finetuned[part]))
  for l in range(L):
    assert params["model"][f"predictors_{l}"] is fresh["model"][f"predictors_{l}"]
  assert params["speed"] is fresh["speed"]
  two_labels = adapler.init(jax.random.key(0), adapler.AdapLeRConfig(EncoderConfig.tiny(),
                                                                    num_labels=2))["model"]
  with pytest.raises(UserError, match="from_finetuned=false"):
    with_finetuned(fresh, {"bert": other["bert"], "head": two_labels["head"]})


@pytest.mark.parametrize("make", [adapler.AdapLeRConfig, ClassifierConfig])
def test_model_configs_check_their_head_at_construction(make):
  enc = EncoderConfig.tiny()
  assert make(enc, num_labels=2, head="span").task_head.restore
  assert make(enc, num_labels=3).num_layers == enc.num_layers
  with pytest.raises(ValueError, match="num_labels=3, pass 2"):
    make(enc, num_labels=3, head="span")
  with pytest.raises(ValueError, match="'tagging' is not one of"):
    make(enc, num_labels=3, head="tagging")


def test_adapler_grads_with_dropout_needs_a_key():
  cfg = adapler.AdapLeRConfig(EncoderConfig.tiny(), num_labels=2)
  with pytest.raises(ValueError, match="needs a key: pass rng= or deterministic=True"):
    adapler_step.adapler_grads(cfg, {}, {}, 1.0, adapler_step.LossWeights(gamma=1.0, phi=1.0))
