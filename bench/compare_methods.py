"""AdapLeR and LAT on equal terms: one backbone, one data set, one cost model, two conventions.

  python bench/compare_methods.py --adapler runs/sst2,runs/sst2_phi0.005 \
      --lat runs/sst2_lat --lat-tradeoff docs/lat_tradeoff_sst2.json --out docs/compare_sst2

Series, all on the eval split of the runs (which must share task, split and max length):

* AdapLeR at each trained phi (one point per AdapLeR workdir, its selected checkpoint);
* AdapLeR's eta-search frontier (`search/frontier.json` of the first AdapLeR workdir, when
  it has one), and the global scalings of its eta (every layer by the same multiplier of the search's grid,
  what `bench/tradeoff.py --eta-multipliers` sweeps);
* LAT's search frontier (`search/frontier.json` of the LAT workdir);
* constant-rate reduction of the standard and the LengthDrop models (`bench/lat_tradeoff.py`);
* the standard fine-tuned model (cost 1).

Cost is a fraction of the full model's, from `adapler_jax.infer.flops`, in the two
conventions side by side: MACs at the padded length, batch 1 (the LAT paper's), and FLOPs on
each example's real tokens (the AdapLeR paper's). Writes OUT.json and OUT.png.

`--reference FILE` adds published points measured elsewhere (another backbone, another split),
JSON `{"label": ..., "points": [{"label", "metric", "padded_fraction"}]}`: they go on the
padded panel against a right-hand axis of their own, never on the measured axis.

  python bench/compare_methods.py --adapler runs/squad --lat-tradeoff docs/lat_tradeoff_squad.json \
      --reference bench/reference/lat_paper_squad.json --out docs/compare_squad

`--budgets 0.15,0.3` adds, per budget, each series' best point that costs at most that
(`--budget-cost`, default real-token FLOPs): where a search frontier beats the global scaling
and the trained point. `--min-cost 0.4` leaves the points below 0.4 of the full model's cost
off the plot (not the JSON), to read the region near the full model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging

from adapler_jax import infer, pipeline
from adapler_jax.cli import run_cli
from adapler_jax.errors import UserError
from adapler_jax.files import atomic_write_text
import timing  # bench/timing.py
from adapler_jax.eval import tradeoff
from adapler_jax.pipeline import checks, frontier
from adapler_jax.pipeline.config import flat
# pylint: enable=g-import-not-at-top,wrong-import-position

CONVENTIONS = (("padded", "padded MACs, batch 1 (LAT paper)"),
               ("actual", "FLOPs on real tokens (AdapLeR paper)"))


def point(label: str, metric: float, padded: float, actual: float, **extra) -> dict:
  return {"label": label, "metric": float(metric), "padded_fraction": float(padded),
          "actual_fraction": float(actual), **extra}


def global_scalings(workdir: str, multipliers=None) -> list[dict]:
  """The first run's model with every layer's eta scaled alike, over `multipliers` (default:
  the search's grid)."""
  trained = pipeline.load_run(workdir)
  data = trained.eval_dataset(trained.config.eval.split)
  engine = _engine(trained, data)
  out = []
  for m in checks.check_grid(multipliers or trained.config.search.eta_multipliers):
    scored = tradeoff.score_eta(engine, data, trained.task.metric, m)
    out.append(point(f"eta x{m:g}", scored["metric"], scored["padded_fraction"],
                     scored["actual_fraction"]))
  return out


def _engine(trained, data) -> infer.AdaptiveEngine:
  return infer.AdaptiveEngine(trained.adapler_cfg, trained.adapler_params,
                              batch_size=trained.config.search.batch_size,
                              max_length=data.max_length)


def adapler_points(workdirs: list[str]) -> tuple[list[dict], dict]:
  """One point per trained AdapLeR run, and the runs' shared eval split."""
  points, split = [], None
  for workdir in workdirs:
    trained = pipeline.load_run(workdir)
    split = trained.config.eval.split
    data = trained.eval_dataset(split)
    scored = tradeoff.score_eta(_engine(trained, data), data, trained.task.metric, 1.0)
    phi = trained.config.adapler.phi
    points.append(point(f"phi={phi:g}", scored["metric"], scored["padded_fraction"],
                        scored["actual_fraction"], workdir=workdir,
                        backbone_metric=trained.backbone_dev_metric))
  return points, {"task": trained.task.name, "split": split, "metric_name": trained.task.metric,
                  "max_length": trained.config.data.max_length}


def frontier_points(workdir: str, split: str, method: str) -> list[dict]:
  """A search frontier's points, labelled with the reported split's metric and costs."""
  search = frontier.load(workdir)
  if search["reported_split"] != split:
    raise UserError(f"{workdir}: its frontier reports {search['reported_split']}, not {split}")
  out = []
  for r in search["frontier"]:
    padded = r.get(f"{split}_padded_fraction", r["padded_fraction"])  # LAT: data-independent.
    setting = r.get("eta_multipliers", r["config"])
    out.append(point(f"{method} " + ",".join(f"{v:g}" for v in setting), r[f"{split}_metric"],
                     padded, r[f"{split}_actual_fraction"], config=r["config"]))
  return out


# What decides which rows a run reports on: runs drawn on one figure must agree on them.
EVAL_ROWS = ("task", "eval.split", "data.max_length", "data.doc_stride", "data.dev_split",
             "data.dev_subset", "data.test_split", "data.resplit_source",
             "data.resplit_train", "data.resplit_test", "data.resplit_seed", "seed")


def check_same_rows(workdirs: list[str]) -> None:
  """One line unless every run evaluates on the same rows (`EVAL_ROWS` of its config.json):
  a 384-token run beside 192-token ones, or another subset, would be drawn silently."""
  def rows(workdir):
    fields = flat(pipeline.read_config(workdir))
    return {field: fields.get(field) for field in EVAL_ROWS}
  first, *rest = workdirs
  want = rows(first)
  for workdir in rest:
    got = rows(workdir)
    differ = [f"{f} {want[f]!r} against {got[f]!r}" for f in EVAL_ROWS if got[f] != want[f]]
    if differ:
      raise UserError(f"{workdir} evaluates on other rows than {first} ({'; '.join(differ)}); "
                      "compare runs of one task, split and data settings")


def compare(adapler_workdirs: list[str], lat_workdir: str | None,
            lat_tradeoff: str | None, reference: str | None = None,
            eta_multipliers=None) -> dict:
  check_same_rows(adapler_workdirs + ([lat_workdir] if lat_workdir else []))
  trained, shared = adapler_points(adapler_workdirs)
  split = shared["split"]
  series = {"AdapLeR (trained at each phi)": trained}
  if (Path(adapler_workdirs[0]) / frontier.FRONTIER_FILE).exists():
    series["AdapLeR eta-search frontier"] = frontier_points(adapler_workdirs[0], split, "eta x")
  series["AdapLeR global eta scaling"] = global_scalings(adapler_workdirs[0], eta_multipliers)
  if lat_workdir:
    series["LAT search frontier"] = frontier_points(lat_workdir, split, "lengths")
  standard = trained[0]["backbone_metric"]
  if lat_tradeoff:
    sweep = json.loads(Path(lat_tradeoff).read_text())
    if (sweep["task"], sweep["split"], sweep["max_length"]) != (
        shared["task"], split, shared["max_length"]):
      raise UserError(f"{lat_tradeoff} is {sweep['task']} {sweep['split']} at "
                      f"{sweep['max_length']} tokens; the AdapLeR runs are {shared}")
    for model, name in (("standard", "standard model, constant rate"),
                        ("lat", "LengthDrop model, constant rate")):
      series[name] = [point(f"r={p['ratio']:g}", p[model], p["padded_fraction"],
                            p["actual_fraction"]) for p in sweep["points"]]
  out = {**shared, "standard_metric": standard, "series": series}
  if reference:
    out["reference"] = read_reference(reference)
  return out


def read_reference(path: str) -> dict:
  """Published points: `{"label", "points": [{"label", "metric", "padded_fraction"}]}`."""
  try:
    ref = json.loads(Path(path).read_text())
    for p in ref["points"]:
      float(p["metric"]), float(p["padded_fraction"]), str(p["label"])
    str(ref["label"])
    if not any(float(p["padded_fraction"]) == 1.0 for p in ref["points"]):
      raise ValueError("no point at padded_fraction 1.0 (the published standard model)")
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"--reference {path}: not a reference file ({e!r}); give JSON "
                    '{"label": ..., "points": [{"label", "metric", "padded_fraction"}]}') from e
  return ref


def drawn(points: list[dict], key: str, min_cost: float | None = None) -> list[dict]:
  """The points of one series a panel draws: those costing at least `min_cost` (a fraction
  of the full model in convention `key`; None: all), cheapest first."""
  keep = [p for p in points if min_cost is None or p[f"{key}_fraction"] >= min_cost]
  return sorted(keep, key=lambda p: p[f"{key}_fraction"])


def plot(result: dict, path: Path, min_cost: float | None = None) -> Path:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  styles = {"AdapLeR (trained at each phi)": dict(color="C3", marker="o", linestyle="none"),
            "AdapLeR eta-search frontier": dict(color="C3", marker=".", linestyle="-"),
            "AdapLeR global eta scaling": dict(color="C1", marker="^", linestyle="--",
                                               markersize=4),
            "LAT search frontier": dict(color="C0", marker="s", linestyle="-"),
            "standard model, constant rate": dict(color="0.5", marker="x", linestyle=":"),
            "LengthDrop model, constant rate": dict(color="C0", marker="+", linestyle=":")}
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
  for ax, (key, title) in zip(axes, CONVENTIONS):
    for name, points in result["series"].items():
      pts = drawn(points, key, min_cost)
      ax.plot([p[f"{key}_fraction"] for p in pts], [100 * p["metric"] for p in pts],
              label=name, **styles.get(name, {}))
    ax.plot([1.0], [100 * result["standard_metric"]], "k*", markersize=13,
            label="standard model, full length")
    ax.set_xscale("log")
    ax.set_xlabel(f"cost / full model, {title} (log)")
    ax.grid(alpha=0.3, which="both")
  metric = result.get("metric_name", "accuracy")
  axes[0].set_ylabel(f"{result['split']} {metric} (%)")
  if "reference" in result:  # published numbers: an axis of their own, at the same scale,
    ref = result["reference"]  # shifted so that the two standard models sit level.
    right = axes[0].twinx()
    pts = ref["points"]
    right.plot([p["padded_fraction"] for p in pts], [p["metric"] for p in pts], "D",
               color="C2", markerfacecolor="none", label=ref["label"])
    for p in pts:
      right.annotate(f"{p['label']} {p['metric']:g}", (p["padded_fraction"], p["metric"]),
                     fontsize=7, textcoords="offset points", xytext=(4, -10), color="C2")
    shift = max(p["metric"] for p in pts if float(p["padded_fraction"]) == 1.0) - (
        100 * result["standard_metric"])
    lo, hi = axes[0].get_ylim()
    right.set_ylim(lo + shift, hi + shift)
    right.set_ylabel(f"published {metric} (%), same scale, standard models level",
                     color="C2", fontsize=8)
    right.tick_params(axis="y", colors="C2")
    right.legend(fontsize=7, loc="upper left")
  axes[1].legend(fontsize=8, loc="lower right")
  methods = ("AdapLeR and LAT" if any("LAT" in n or "LengthDrop" in n for n in result["series"])
             else "AdapLeR")
  shown = f"; costs below {min_cost:g} not drawn" if min_cost is not None else ""
  fig.suptitle(f"{result['task']} {result['split']}: {methods} on one backbone, "
               f"max length {result['max_length']}{shown}")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def table(result: dict) -> str:
  lines = [f"{'series':<34} {'point':<30} {'metric':>7} {'padded':>7} {'actual':>7}"]
  for name, points in result["series"].items():
    for p in sorted(points, key=lambda p: p["actual_fraction"]):
      lines.append(f"{name:<34} {p['label'][:30]:<30} {100 * p['metric']:>7.2f} "
                   f"{p['padded_fraction']:>7.3f} {p['actual_fraction']:>7.3f}")
  lines.append(f"standard model, full length: {100 * result['standard_metric']:.2f}")
  for p in result.get("reference", {}).get("points", []):
    lines.append(f"{result['reference']['label']}: {p['label']} {p['metric']:.1f} at "
                 f"{p['padded_fraction']:.2f} padded")
  return "\n".join(lines)


def under_budgets(result: dict, budgets: list[float], key: str = "actual") -> dict:
  """Per budget (a fraction of the full model's cost in convention `key`), each series' best
  metric among its points that cost at most that: `{budget: {series: point or None}}`. One
  rule for every series, so a search frontier and the global scaling compare point for point."""
  out = {}
  for budget in budgets:
    out[budget] = {}
    for name, points in result["series"].items():
      fits = [p for p in points if p[f"{key}_fraction"] <= budget]
      out[budget][name] = max(fits, key=lambda p: p["metric"]) if fits else None
  return out


def budget_table(picked: dict, key: str) -> str:
  names = list(next(iter(picked.values())))
  lines = [f"best {key}-cost point under each budget: " + " | ".join(names)]
  for budget, row in picked.items():
    cells = [f"{100 * p['metric']:.2f} ({p['label']}, {p[f'{key}_fraction']:.3f})" if p else "-"
             for p in row.values()]
    lines.append(f"{budget:g}: " + " | ".join(cells))
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--adapler", required=True,
                      help="comma-separated AdapLeR workdirs; the first holds the eta search")
  parser.add_argument("--lat", default=None, help="a LAT workdir with a search")
  parser.add_argument("--lat-tradeoff", default=None, help="bench/lat_tradeoff.py's JSON")
  parser.add_argument("--reference", default=None,
                      help="published points to draw on their own axis (see the docstring)")
  parser.add_argument("--eta-multipliers", default="",
                      help="global eta scalings to draw, e.g. 0.5,1,2 (default: the search grid)")
  parser.add_argument("--budgets", default="",
                      help="cost budgets to tabulate each series' best point under, e.g. 0.15,0.3")
  parser.add_argument("--budget-cost", default="actual", choices=[k for k, _ in CONVENTIONS],
                      help="the convention --budgets are fractions of")
  parser.add_argument("--out", required=True, help="output stem: OUT.json and OUT.png")
  parser.add_argument("--min-cost", type=float, default=None,
                      help="draw only points costing at least this fraction of the full model "
                           "(e.g. 0.4, to read the region near it); the JSON keeps every point")
  args = parser.parse_args(argv)
  timing.out_files(*timing.figure_files(args.out))
  if args.min_cost is not None and not 0 < args.min_cost < 1:
    raise UserError(f"--min-cost {args.min_cost:g} is not a fraction of the full model's cost; "
                    "pass a number between 0 and 1, e.g. 0.4")
  logging.set_verbosity(logging.WARNING)
  try:
    multipliers = [float(m) for m in args.eta_multipliers.split(",") if m] or None
    budgets = [float(b) for b in args.budgets.split(",") if b]
  except ValueError as e:
    raise UserError(f"--eta-multipliers {args.eta_multipliers!r} or --budgets {args.budgets!r} "
                    "is not a list of numbers; pass e.g. 0.5,1,2") from e
  if multipliers:  # before any run is loaded: a bad grid fails in a second, not minutes.
    checks.check_grid(multipliers, "--eta-multipliers")
  result = compare(args.adapler.split(","), args.lat, args.lat_tradeoff, args.reference,
                   multipliers)
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  if budgets:
    picked = under_budgets(result, budgets, args.budget_cost)
    result["under_budgets"] = {"cost": args.budget_cost,
                               "points": {f"{b:g}": row for b, row in picked.items()}}
  json_path, png_path = timing.figure_files(out)
  atomic_write_text(json_path, json.dumps(result, indent=2))
  plot(result, png_path, args.min_cost)
  print(table(result))
  if budgets:
    print(budget_table(picked, args.budget_cost))
  print(f"wrote {json_path} and {png_path}")


if __name__ == "__main__":
  run_cli(main)
