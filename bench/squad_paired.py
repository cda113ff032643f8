"""Is one SQuAD predictions file really better than another? The difference of their exact
match and F1 on the same questions, with a paired bootstrap interval.

  python bench/squad_paired.py --data-dir data/squad \
      --baseline runs/full/predictions.json --candidate runs/pick/predictions.json \
      --out bench/results/paired.json

Both files are official `{id: answer}` predictions of the same questions (evaluate.py writes
them); each question scores its best gold answer from the dev file. Prints candidate minus
baseline in points, with its interval and the share of resamples in which the candidate is
at most `--within` points below the baseline, twice: resampling questions, and resampling
whole articles (`by_article`; questions about one passage are not independent draws, so on
few articles this interval is the wider and the more honest one).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
from adapler_jax.cli import run_cli
from adapler_jax.data.squad import load_squad
from adapler_jax.errors import UserError
from adapler_jax.files import atomic_write_text, check_output
from adapler_jax.eval import squad as squad_eval
from adapler_jax.eval.metrics import paired_bootstrap


def _predictions(path: Path) -> dict[str, str]:
  try:
    predictions = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: not a readable predictions JSON ({type(e).__name__}); pass the "
                    "predictions.json evaluate.py wrote") from None
  if not isinstance(predictions, dict) or not predictions:
    raise UserError(f"{path}: expected a non-empty {{id: answer}} object, as evaluate.py writes")
  return predictions


def compare(baseline: dict[str, str], candidate: dict[str, str], examples, *,
            resamples: int, seed: int, within: float) -> dict:
  """Candidate minus baseline, in points, per metric, on the same questions."""
  if set(baseline) != set(candidate):
    raise UserError(f"the two files answer different questions ({len(baseline)} and "
                    f"{len(candidate)} ids, {len(set(baseline) ^ set(candidate))} not in both); "
                    "compare predictions of the same split and subset")
  asked = [e for e in examples if e.id in baseline]
  if len(asked) != len(baseline):
    raise UserError(f"{len(baseline) - len(asked)} predicted ids are not in the dev file; pass "
                    "the --data-dir the predictions were made from")
  a = squad_eval.question_scores(baseline, asked)
  b = squad_eval.question_scores(candidate, asked)
  articles = [e.title for e in asked]
  out = {"questions": len(asked), "articles": len(set(articles)), "within": within}
  for name in ("exact_match", "f1"):
    paired = lambda groups: paired_bootstrap(100 * a[name], 100 * b[name], resamples=resamples,
                                             seed=seed, at_least=-within, groups=groups)
    out[name] = {"baseline": 100 * a[name].mean(), "candidate": 100 * b[name].mean(),
                 **paired(None), "by_article": paired(articles)}
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data-dir", required=True, help="folder of the SQuAD v1.1 dev file")
  parser.add_argument("--baseline", required=True, type=Path)
  parser.add_argument("--candidate", required=True, type=Path)
  parser.add_argument("--resamples", type=int, default=10_000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--within", type=float, default=2.0,
                      help="points: report the share of resamples at most this far below")
  parser.add_argument("--out", type=Path, help="JSON file for the result")
  args = parser.parse_args()
  if args.resamples < 1000:
    raise UserError(f"--resamples {args.resamples} is too few for a 95 % interval; use 1000 "
                    "or more")
  if args.out:
    check_output(args.out, flag="--out")
  result = compare(_predictions(args.baseline), _predictions(args.candidate),
                   load_squad("dev", args.data_dir).examples, resamples=args.resamples,
                   seed=args.seed, within=args.within)
  result.update(baseline_file=str(args.baseline), candidate_file=str(args.candidate))
  print(f"{result['questions']} questions of {result['articles']} articles, "
        f"{args.resamples} paired resamples of questions / of articles")
  print(f"{'metric':12} {'baseline':>9} {'candidate':>9} {'difference [95%]':>24} "
        f"{'share >= -' + str(args.within):>13} {'by article [95%]':>18} {'share':>6}")
  for name in ("exact_match", "f1"):
    r, g = result[name], result[name]["by_article"]
    print(f"{name:12} {r['baseline']:9.2f} {r['candidate']:9.2f} "
          f"{r['mean']:+8.2f} [{r['low']:+.2f}, {r['high']:+.2f}] {r['share_at_least']:13.3f} "
          f"[{g['low']:+.2f}, {g['high']:+.2f}] {g['share_at_least']:6.3f}")
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
  run_cli(main)
