"""One training step on MiniLM: our fine-tuning step vs Hugging Face PyTorch, and our AdapLeR step.

All systems train the embedded all-MiniLM-L6-v2 with a fresh classification head (the same
weights in both frameworks) on the same padded batch: `--batch-size` rows of random token
ids, their lengths drawn between a quarter of `--length` and `--length`, padded to
`--length`. Each system runs the step a training loop runs, with dropout on:

| system | step |
|---|---|
| `ours-finetune` | `train.classifier.make_finetune_step` with `train.optim.adamw` (global-norm clip 1, AdamW, decay on kernels and embeddings), state donated |
| `hf-pytorch` | `transformers.BertForSequenceClassification` in train mode: forward with labels, backward, `clip_grad_norm_(1)`, `torch.optim.AdamW` (decay on all but biases and LayerNorm) |
| `ours-adapler` | `train.adapler_step.make_train_step`: the soft-removal forward, two gradients, the partitioned update |

Timing (`bench/timing.py`): a warm-up step each, then `--repeats` interleaved repeats; each
measurement runs whole steps for at least `--min-seconds` and keeps the mean step time. The
table gives medians and min-max spreads of step times and of the per-repeat ratios::

  python bench/train_step.py --threads 1 --out bench/results/train_step.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# pylint: disable=g-import-not-at-top,wrong-import-position
import timing  # bench/timing.py
# pylint: enable=g-import-not-at-top,wrong-import-position

SYSTEMS = ("ours-finetune", "hf-pytorch", "ours-adapler")
LEARNING_RATE = 2e-5
WEIGHT_DECAY = 0.1  # optim.adamw's default.
NUM_LABELS = 2


def padded_batch(vocab_size: int, batch_size: int, length: int, seed: int) -> dict:
  """A padded batch of random tokens: [CLS] ... [SEP] then padding, int32 / bool numpy."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(max(3, length // 4), length + 1, batch_size)
  ids = rng.integers(1000, vocab_size, (batch_size, length)).astype(np.int32)
  mask = np.arange(length)[None, :] < lengths[:, None]
  ids[:, 0] = 101
  ids[np.arange(batch_size), lengths - 1] = 102
  ids = np.where(mask, ids, 0).astype(np.int32)
  return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask,
          "labels": rng.integers(0, NUM_LABELS, batch_size).astype(np.int32)}


def ours_finetune(backbone, batch: dict):
  """A closure running one fine-tuning step per call on a persistent, donated state."""
  import jax
  from adapler_jax.train import classifier, optim
  from adapler_jax.train.state import create_train_state
  key = jax.random.key(0)
  params = classifier.init_classifier(key, backbone.config, NUM_LABELS, backbone.params)
  optimizer = optim.adamw(LEARNING_RATE, WEIGHT_DECAY)
  state = create_train_state(params, optimizer, key)
  step = classifier.make_finetune_step(backbone.config, NUM_LABELS, optimizer)
  batch = jax.device_put(batch)
  holder = {"state": state}

  def call():
    holder["state"], metrics = step(holder["state"], batch)
    return float(metrics["loss"])  # reading the loss waits for the step.
  return call, params


def ours_adapler(backbone, batch: dict, length: int):
  """A closure running one AdapLeR step per call (demo loss weights, lambda 10)."""
  import jax
  from adapler_jax.models import adapler
  from adapler_jax.train import adapler_step, optim
  from adapler_jax.train.state import create_train_state
  key = jax.random.key(1)
  cfg = adapler.AdapLeRConfig(backbone.config, num_labels=NUM_LABELS)
  params = adapler.init(key, cfg, backbone=backbone.params)
  optimizer = optim.adapler_optimizer(LEARNING_RATE, 10_000, weight_decay=WEIGHT_DECAY)
  state = create_train_state(params, optimizer, key)
  step = adapler_step.make_train_step(cfg, optimizer,
                                      adapler_step.LossWeights(gamma=0.1, phi=0.1))
  sal = np.random.default_rng(2).random(batch["input_ids"].shape).astype(np.float32)
  batch = jax.device_put({**batch, "saliency": sal * batch["attention_mask"]})
  holder = {"state": state}

  def call():
    holder["state"], metrics = step(holder["state"], batch, 10.0)
    return float(metrics["ce"])
  return call


def hf_pytorch(encoder, params: dict, batch: dict):
  """A closure running one `BertForSequenceClassification` training step per call."""
  import torch
  import transformers
  from adapler_jax.weights import to_hf_state_dict
  config = transformers.BertConfig(
      vocab_size=encoder.vocab_size, hidden_size=encoder.hidden_size,
      num_hidden_layers=encoder.num_layers, num_attention_heads=encoder.num_heads,
      intermediate_size=encoder.intermediate_size, type_vocab_size=encoder.type_vocab_size,
      max_position_embeddings=encoder.max_position_embeddings,
      layer_norm_eps=encoder.layer_norm_eps, hidden_act="gelu",
      hidden_dropout_prob=encoder.hidden_dropout,
      attention_probs_dropout_prob=encoder.attention_dropout,
      pad_token_id=encoder.pad_token_id, num_labels=NUM_LABELS)
  model = transformers.BertForSequenceClassification(config)
  state = to_hf_state_dict(params["bert"], params["head"])
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                        strict=True)
  model.train()
  no_decay = lambda n: n.endswith("bias") or "LayerNorm" in n
  groups = [{"params": [p for n, p in model.named_parameters() if not no_decay(n)],
             "weight_decay": WEIGHT_DECAY},
            {"params": [p for n, p in model.named_parameters() if no_decay(n)],
             "weight_decay": 0.0}]
  optimizer = torch.optim.AdamW(groups, lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-6)
  inputs = {"input_ids": torch.from_numpy(batch["input_ids"]).long(),
            "token_type_ids": torch.from_numpy(batch["token_type_ids"]).long(),
            "attention_mask": torch.from_numpy(batch["attention_mask"]).long(),
            "labels": torch.from_numpy(batch["labels"]).long()}

  def call():
    optimizer.zero_grad(set_to_none=True)
    loss = model(**inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()
  return call


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--length", type=int, default=64)
  parser.add_argument("--systems", default=",".join(SYSTEMS))
  parser.add_argument("--repeats", type=int, default=5, help="interleaved timed repeats")
  parser.add_argument("--min-seconds", type=float, default=3.0,
                      help="each measurement runs whole steps for at least this long")
  parser.add_argument("--threads", type=int, default=None,
                      help="pin the process to this many CPUs, for JAX and PyTorch alike")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None,
                      help="JSON file for the results (default: none, the table "
                           "only: the files under bench/results are the ones cited)")
  args = parser.parse_args(argv)
  args.systems = timing.systems_arg(args.systems, SYSTEMS)
  for flag, value in (("--batch-size", args.batch_size), ("--length", args.length)):
    timing.positive_ints(str(value), flag, "32")
  if args.length < 3:  # [CLS], a token, [SEP]: the batch's lengths are drawn from 3 up.
    from adapler_jax.errors import UserError  # pylint: disable=g-import-not-at-top
    raise UserError(f"--length is {args.length}; pass at least 3, e.g. --length 64")
  timing.check_counts(args)
  timing.out_path(args.out)
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  threads = timing.pin_threads(args.threads)
  import jax  # pylint: disable=g-import-not-at-top
  from adapler_jax import environment  # pylint: disable=g-import-not-at-top
  from adapler_jax.weights import load_backbone  # pylint: disable=g-import-not-at-top
  backbone = load_backbone("minilm")
  if args.length > backbone.config.max_position_embeddings:
    from adapler_jax.errors import UserError  # pylint: disable=g-import-not-at-top
    raise UserError(f"--length {args.length} is beyond MiniLM's "
                    f"{backbone.config.max_position_embeddings} positions; pass at most that")
  batch = padded_batch(backbone.config.vocab_size, args.batch_size, args.length, args.seed)
  calls = {}
  finetune, params = ours_finetune(backbone, batch)
  host_params = jax.tree.map(np.asarray, params)  # before any donated step.
  if "ours-finetune" in args.systems:
    calls["ours-finetune"] = finetune
  if "hf-pytorch" in args.systems:
    try:
      calls["hf-pytorch"] = hf_pytorch(backbone.config, host_params, batch)
    except ImportError:
      print("torch or transformers is not installed: skipping hf-pytorch", file=sys.stderr)
  if "ours-adapler" in args.systems:
    calls["ours-adapler"] = ours_adapler(backbone, batch, args.length)
  seconds, results = timing.interleaved(calls, args.repeats, args.min_seconds,
                                          log=lambda s: print(s, flush=True))
  rows = []
  for name in calls:
    rows.append({"system": name, "step_ms": timing.summary(1e3 * np.asarray(seconds[name]), 1),
                 "steps_per_measurement": [len(r) for r in results[name]]})
  ratios = {}
  if "ours-finetune" in calls and "hf-pytorch" in calls:
    # throughput of ours over PyTorch's: PyTorch's step time over ours.
    ratios["ours_finetune_speed_over_hf"] = timing.ratio(seconds["hf-pytorch"],
                                                         seconds["ours-finetune"])
  if "ours-finetune" in calls and "ours-adapler" in calls:
    ratios["adapler_time_over_finetune"] = timing.ratio(seconds["ours-adapler"],
                                                        seconds["ours-finetune"])
  print(f"\nMiniLM, batch {args.batch_size} x length {args.length}, {threads} CPU thread(s), "
        f"{args.repeats} interleaved repeats, >= {args.min_seconds:g} s each")
  print(f"{'system':>14}  {'step ms: median [min-max]':>28}")
  for r in rows:
    print(f"{r['system']:>14}  {timing.fmt(r['step_ms'], 1, 1):>28}")
  for name, r in ratios.items():
    note = "" if r["stable"] else f"  (spread +-{100 * r['spread']:.0f} % > +-10 %)"
    print(f"{name:>30}: {timing.fmt(r, 1, 3)}{note}")
  result = {"batch_size": args.batch_size, "length": args.length, "cpu_threads": threads,
            "repeats": args.repeats, "min_seconds": args.min_seconds,
            "environment": environment.describe(),
            "jax_default_prng_impl": jax.config.jax_default_prng_impl,
            "rows": rows, "ratios": ratios}
  try:
    import torch  # pylint: disable=g-import-not-at-top
    result["torch"] = torch.__version__
  except ImportError:
    pass
  if args.out is None:
    return
  from adapler_jax.files import atomic_write_text  # pylint: disable=g-import-not-at-top
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  atomic_write_text(out, json.dumps(result, indent=1) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  from adapler_jax.cli import run_cli  # pylint: disable=g-import-not-at-top
  run_cli(main)
