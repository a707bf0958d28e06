"""Acquisition strategies compared on the synthetic benchmark: mIoU per strategy and budget.

The protocol of `scripts/compare_strategies.py` (its command line); tests and tools import it.

Protocol, per seed (the seed sets initialisation, data order and random picks; the benchmark's
images are the same for every seed):
  1. source_only: the demo network (configs/demo.py) from random initialisation, trained on
     the synthetic source domain alone (plain cross-entropy).
  2. every other setting starts from that model and trains `adapt_steps` more steps:
     RIPU's objective with 5 selection rounds early in the schedule (RA: 3x3 regions; PA: one
     pixel per image and round, the 40-pixel budget scaled to 128x256, k scaled with it from
     the released 32 to 4); `full` is cross-entropy on every target pixel alone, and
     `full_source` RIPU's objective (source data included) with every target pixel labelled
     (active.kind "all"): the two upper bounds. LabOR's settings (`labor_spl_2.2`: SPL capped
     at RIPU-RA's 2.2%, `labor_spl`: uncapped, `labor_ppl_40`: PPL against RIPU-PA) train
     LabOR's objective from the same source-only model, with the same number of rounds at the
     same spacing, shifted one interval later: LabOR's selector B starts with a fresh second
     head that disagrees with the first almost everywhere, so a round at step 0 would buy
     pixels picked by an untrained selector (uncapped, 72% of the image; capped, A's most
     confident pixels). The interval before the first round is LabOR's warm-up, as the real-data
     schedule trains B for 10k steps before its first round.
  Every setting sees the same number of steps; only what it may learn from on the target differs,
  except ELN's:
  3. `ripu_eln_2.2` is RIPU-RA 2.2% whose schedule runs half as long again (adapt_steps x 1.5,
     the poly schedule to its end), with ELN's stage after it (ripu_jax.methods.eln.adaptation:
     auxiliary heads and the ELN from adapt_steps, self-training from a quarter of the extra
     steps later); `ripu_ra_2.2_long` is its baseline, RIPU simply continued for those steps.
     Both are RIPU-RA 2.2% with a longer schedule until adapt_steps, step for step the same.
     `ripu_superpixels_2.2` is RIPU-RA 2.2% with SEEDS superpixels (64 pixels on average) as
     regions in place of 3x3 squares, bought in pool-wide score order (RIPU's region-shape
     ablation; the acquirer "ra_superpixels" of ripu_jax.methods.viewal).
  4. `eln_semi_1-8` and `supervised_1-8` are the semi-supervised setting (configs/eln/
     demo_semi.py): no source domain, no source-only model; 1/8 of the target training images
     labelled, source_steps + adapt_steps steps of ELN's three stages (supervised to 40% of
     them, + auxiliary decoders and ELN to 60%, then self-training), or of the supervised
     stage alone. Their network (ELN's output-stride-16 DeepLab-v3+) is not the others', so
     they compare with each other only.

Every run lives in `workdir/seed<s>/<setting>/` (a normal trainer workdir). A finished run
is never redone, an interrupted one resumes from its checkpoint: run the comparison again.
Finished runs can be shared without their checkpoints (copy each run's config.json and
run.json): if a setting still to run finds its seed's source-only model missing, that model
is trained again (training is deterministic on one machine) and its mIoU checked against the
stored one.

A workdir's runs are only mixed with runs of the same protocol: before reusing a run, its
stored config.json is compared with the config this code makes for it, on a normalised view
(`_protocol`) that survives config changes which do not change results (renamed values,
fields removed from the config, new fields left at their default). Otherwise the stored
benchmark runs (benchmarks/compare_strategies/runs) would be refused after every such change.

Outputs: `results.json` (every run), `results.md` (mean +- std mIoU per setting, rare
classes' IoU, wall clock) and `miou_vs_budget.png` (mIoU against labelled fraction). The table
and the plot are `ripu_jax.report`'s over the run folders, grouped by setting (what
`python -m ripu_jax.report --workdir WORKDIR/seed*/* --group name` shows), with the
comparison's labels, budgets, setting order, rare classes and domain gap added.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ripu_jax import exports
from ripu_jax import report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_CONFIG = os.path.join(ROOT, "configs", "demo.py")  # the network and data of every run
SEMI_CONFIG = os.path.join(ROOT, "configs", "eln", "demo_semi.py")  # ELN's semi-supervised runs

RARE_CLASSES = ("pole", "traffic light", "traffic sign", "person", "bicycle")
RESULT_FILE = report.RUN_FILE  # run.json, written by run_setting when a run has finished
SOURCE_ONLY = "source_only"
ROUNDS = 5  # selection rounds of every active setting, in the first half of its steps
DEFAULT_STEPS = (600, 600)  # (source-only steps, steps of every other setting)
SMOKE_STEPS = (6, 6)


@dataclasses.dataclass(frozen=True)
class Setting:
  """One row of the comparison: a strategy at a budget."""

  name: str  # run folder and row id
  label: str  # strategy as the table and the plot name it (one plot line per label)
  budget: str  # the budget in words
  overrides: tuple  # ((config field, value), ...) applied to the adaptation config
  # "labor_spl" / "labor_ppl": LabOR's objective and acquirer (its config); "ripu_eln": the
  # ELN stage after RIPU; "eln_semi" / "supervised_semi": the semi-supervised setting;
  # "ripu_superpixels": RIPU's score over SEEDS superpixels (the ViewAL plug-in's acquirer).
  method: str = ""
  warmup_rounds: int = 0  # round intervals trained before the first round (LabOR's warm-up)
  extended: bool = False  # adapt_steps x 1.5 (the ELN stage and its baseline)


def _ra(strategy: str, ratio: float) -> tuple:
  return (("active.kind", "ra"), ("active.strategy", strategy), ("active.ratio", ratio),
          ("active.radius", 1))


SETTINGS = (
    Setting(SOURCE_ONLY, "source only", "0", ()),
    Setting("ripu_ra_2.2", "RIPU (RA)", "2.2% (regions)", _ra("ripu", 0.022)),
    Setting("ripu_ra_5", "RIPU (RA)", "5% (regions)", _ra("ripu", 0.05)),
    Setting("random_ra_2.2", "RAND (RA)", "2.2% (regions)", _ra("random", 0.022)),
    Setting("entropy_ra_2.2", "ENT (RA)", "2.2% (regions)", _ra("entropy", 0.022)),
    Setting("confidence_ra_2.2", "SCONF (RA)", "2.2% (regions)", _ra("confidence", 0.022)),
    Setting("impurity_ra_2.2", "impurity only (RA)", "2.2% (regions)", _ra("impurity", 0.022)),
    Setting("uncertainty_ra_2.2", "uncertainty only (RA)", "2.2% (regions)",
            _ra("uncertainty", 0.022)),
    Setting("ripu_pa_40", "RIPU (PA)", "40 px at 1280x640", (
        ("active.kind", "pa"), ("active.strategy", "ripu"), ("active.pixels", 40),
        ("active.radius", 4))),
    Setting("full", "full supervision", "100%", (
        ("active.kind", "all"), ("train.objective", "source_free"),
        ("train.negative_weight", 0.0))),
    Setting("full_source", "full supervision + source", "100%", (("active.kind", "all"),)),
    Setting("labor_spl_2.2", "LabOR SPL", "2.2% (capped segments)",
            (("labor.spl_cap", 0.022),), method="labor_spl", warmup_rounds=1),
    Setting("labor_spl", "LabOR SPL (uncapped)", "inconsistent pixels", (), method="labor_spl",
            warmup_rounds=1),
    Setting("labor_ppl_40", "LabOR PPL", "40 pt at 1280x640", (("active.pixels", 40),),
            method="labor_ppl", warmup_rounds=1),
    Setting("ripu_ra_2.2_long", "RIPU (RA), 1.5x steps", "2.2% (regions)",
            _ra("ripu", 0.022), extended=True),
    Setting("ripu_eln_2.2", "RIPU (RA) + ELN stage", "2.2% (regions)", _ra("ripu", 0.022),
            method="ripu_eln", extended=True),
    Setting("supervised_1-8", "supervised (semi-supervised net)", "1/8 of the images", (),
            method="supervised_semi"),
    Setting("eln_semi_1-8", "ELN self-training", "1/8 of the images", (), method="eln_semi"),
    Setting("ripu_superpixels_2.2", "RIPU over superpixels (RA)", "2.2% (regions)", (
        ("active.kind", "ra_superpixels"), ("active.strategy", "ripu"),
        ("active.ratio", 0.022)), method="ripu_superpixels"),
)
SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}


def resolve_settings(names: Iterable[str]) -> list[Setting]:
  """The settings named, in SETTINGS order, with source_only added (every other starts from it).

  Raises ValueError naming the unknown ones and the choices.
  """
  names = list(names)
  unknown = [n for n in names if n not in SETTINGS_BY_NAME]
  if unknown:
    raise ValueError(f"unknown settings {unknown}; choose from {list(SETTINGS_BY_NAME)}")
  return [s for s in SETTINGS if s.name in names or s.name == SOURCE_ONLY]


def default_steps(smoke: bool = False) -> tuple[int, int]:
  """(source-only steps, steps of every other setting) unless told otherwise."""
  return SMOKE_STEPS if smoke else DEFAULT_STEPS


def run_dir(workdir: str, seed: int, setting: str) -> str:
  return os.path.join(os.path.abspath(workdir), f"seed{seed}", setting)


def _semi_config(setting: Setting, seed: int, *, steps: int, smoke: bool, progress_bars: bool):
  """ELN's semi-supervised demo on `steps` steps: its stages at 40% / 60%, or none."""
  from ripu_jax import config_lib  # pylint: disable=g-import-not-at-top
  from ripu_jax import registry  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(SEMI_CONFIG, "smoke" if smoke else None)
  config.seed = seed
  config.progress_bars = progress_bars
  config.num_steps = steps
  config.checkpoint_every = max(1, steps // 4)
  config.eval.every = steps
  if setting.method == "eln_semi":
    config.eln.update(aux_from=int(0.4 * steps), self_training_from=int(0.6 * steps))
  else:  # the supervised stage alone
    config.eln.update(aux_from=steps, self_training_from=steps)
  registry.import_plugins(config.plugins)
  config_lib.validate(config)
  return config


def make_config(setting: Setting, seed: int, workdir: str, *, source_steps: int,
                adapt_steps: int, smoke: bool = False, progress_bars: bool = False):
  """The trainer config of one run (see the module docstring for the protocol)."""
  from ripu_jax import config_lib  # pylint: disable=g-import-not-at-top
  if setting.method.endswith("_semi"):
    return _semi_config(setting, seed, steps=source_steps + adapt_steps, smoke=smoke,
                        progress_bars=progress_bars)
  config = config_lib.load_config(DEMO_CONFIG, "smoke" if smoke else None)
  config.seed = seed
  config.progress_bars = progress_bars
  if setting.name == SOURCE_ONLY:
    config.train.objective = "source_only"
    config.train.consistency_weight = 0.0
    config.active.kind = "none"
    steps = source_steps
  else:
    config.model.init_from = run_dir(workdir, seed, SOURCE_ONLY)
    steps = adapt_steps + (adapt_steps // 2 if setting.extended else 0)
    every = max(1, adapt_steps // 10)
    config.active.round_steps = tuple(every * (setting.warmup_rounds + r) for r in range(ROUNDS))
  config.num_steps = config.optim.max_iter = steps
  config.checkpoint_every = max(1, steps // 4)
  config.eval.every = steps
  if setting.method.startswith("labor_"):
    from ripu_jax.methods.labor.config import labor_config  # pylint: disable=g-import-not-at-top
    labor_config(config, setting.method.split("_", 1)[1])
  if setting.method == "ripu_eln":
    from ripu_jax.methods.eln import config as eln_config  # pylint: disable=g-import-not-at-top
    eln_config.after_ripu_config(config, num_steps=steps, aux_from=adapt_steps,
                                 self_training_from=adapt_steps + (steps - adapt_steps) // 4)
    config.eln.network = eln_config.network_config(smoke)
  if setting.method == "ripu_superpixels":
    config.plugins = tuple(config.plugins) + ("ripu_jax.methods.viewal",)
  if setting.method:
    from ripu_jax import registry  # pylint: disable=g-import-not-at-top
    registry.import_plugins(config.plugins)
  for field, value in setting.overrides:
    group, name = field.split(".")
    config[group][name] = value
  config_lib.validate(config)
  return config


# How a stored run's config.json is compared with the config made now (`_protocol`). Fields
# are dotted paths into the config.
#
# Fields that do not change a run's result: the source-only model's path (it names the
# workdir's place) and whether progress bars were drawn (a terminal or not).
IRRELEVANT_FIELDS = frozenset({"model.init_from", "progress_bars"})
# Fields taken out of the config since runs were stored, whose value is now decided elsewhere
# by what the config still holds: the number of classes comes from the dataset's label space.
REMOVED_FIELDS = frozenset({"model.num_classes"})
# Values renamed since runs were stored: field -> {old value: new value}.
LEGACY_VALUES = {"active.kind": {"full": "all"}}
# Defaults of fields added since runs were stored: a run whose config lacks one was made as
# with this value. A field not listed takes its default from `config_lib.base_config()` (the
# rule for a new config field is a default that keeps the earlier behaviour; a plug-in group's
# new fields are in `config_lib.GROUP_FIELD_DEFAULTS`).
FIELD_DEFAULTS = {"plugins": (), "hooks": ()}
# Free-form groups (keyword arguments of the model's constructor): a key absent there means
# the constructor's default, which the config does not know, so it never counts as a default.
OPAQUE_GROUPS = ("model.kwargs",)


def _field_defaults() -> dict[str, Any]:
  """{field: default} as config.json writes them (tuples as lists), opaque groups left out."""
  from ripu_jax import config_lib  # pylint: disable=g-import-not-at-top
  defaults = config_lib.field_defaults()
  defaults.update(json.loads(json.dumps(FIELD_DEFAULTS)))
  return {field: value for field, value in defaults.items()
          if not any(field.startswith(group + ".") for group in OPAQUE_GROUPS)}


def _protocol(config_json: str) -> dict[str, Any]:
  """A run's config (config.json text) as {field: value} of what decides its result.

  Irrelevant and removed fields are dropped, legacy values renamed, and a field equal to its
  default dropped too: so a field absent on one side and at its default on the other compares
  equal, and configs written before and after such changes give the same view.
  """
  from ripu_jax import workdir  # pylint: disable=g-import-not-at-top
  defaults = _field_defaults()
  protocol = {}
  for field, value in workdir.flatten(json.loads(config_json)).items():
    if field in IRRELEVANT_FIELDS or field in REMOVED_FIELDS:
      continue
    if isinstance(value, str):
      value = LEGACY_VALUES.get(field, {}).get(value, value)
    if field in defaults and value == defaults[field]:
      continue
    protocol[field] = value
  return protocol


def protocol_differences(stored_json: str, config_json: str) -> list[str]:
  """The fields (as 'field: stored vs now' lines) in which two runs' protocols differ."""
  stored, current = _protocol(stored_json), _protocol(config_json)
  defaults = _field_defaults()
  missing = object()

  def show(protocol: dict, field: str) -> str:
    if field in protocol:
      return repr(protocol[field])
    return f"{defaults[field]!r} (default)" if field in defaults else "absent"

  return [f"{field}: {show(stored, field)} stored vs {show(current, field)} now"
          for field in sorted(set(stored) | set(current))
          if stored.get(field, missing) != current.get(field, missing)]


def run_setting(setting: Setting, seed: int, workdir: str, **config_kwargs) -> dict:
  """Trains one run, or returns its stored result if it has finished before."""
  from ripu_jax import train  # pylint: disable=g-import-not-at-top
  config = make_config(setting, seed, workdir, **config_kwargs)
  directory = run_dir(workdir, seed, setting.name)
  stored_config = os.path.join(directory, train.CONFIG_FILE)
  if os.path.exists(stored_config):
    with open(stored_config) as f:
      differences = protocol_differences(f.read(), config.to_json_best_effort())
    if differences:
      raise ValueError(
          f"{directory} holds a run made with other settings (its {train.CONFIG_FILE} differs "
          "from this command's config, e.g. --smoke or the step counts changed: "
          f"{'; '.join(differences)}). Use a new --workdir, or delete that folder to redo the "
          "run.")
  result_path = os.path.join(directory, RESULT_FILE)
  if os.path.exists(result_path):
    with open(result_path) as f:
      return json.load(f)
  start = time.perf_counter()
  summary = train.train_and_evaluate(config, directory)
  result = {"setting": setting.name, "seed": seed, "seconds": time.perf_counter() - start,
            "miou": summary["miou"], "labelled_fraction": summary["labelled_fraction"],
            "iou": summary["iou"], "step": config.num_steps}
  exports.write_json(result_path, result, indent=1)
  return result


def _has_checkpoint(directory: str) -> bool:
  """Whether a run folder holds a finished orbax checkpoint to start other runs from."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  folder = os.path.join(directory, "checkpoints")
  return os.path.isdir(folder) and bool(ocp.utils.checkpoint_steps(folder))


def ensure_source_model(seed: int, workdir: str, **config_kwargs) -> None:
  """Retrains a seed's source-only model whose result was kept but whose checkpoint was not."""
  directory = run_dir(workdir, seed, SOURCE_ONLY)
  result_path = os.path.join(directory, RESULT_FILE)
  if _has_checkpoint(directory) or not os.path.exists(result_path):
    return  # present, or not trained yet (run_setting trains it first)
  with open(result_path) as f:
    stored = json.load(f)
  print(f"    seed {seed}: the source-only model is missing (results copied without "
        "checkpoints?); training it again", flush=True)
  os.replace(result_path, result_path + ".stored")
  result = run_setting(SETTINGS_BY_NAME[SOURCE_ONLY], seed, workdir, **config_kwargs)
  os.remove(result_path + ".stored")
  if abs(result["miou"] - stored["miou"]) > 1e-6:
    print(f"WARNING: seed {seed}'s retrained source-only model scores {result['miou']:.3f} "
          f"mIoU, the stored run {stored['miou']:.3f}: this machine does not reproduce it "
          "exactly, so runs started from the new model mix with older ones", flush=True)


def _setting_of(run: dict) -> str:
  """A run's setting: run.json's "setting", or its folder's name (report.load_run's record)."""
  return run["setting"] if "setting" in run else run["name"]


def summarize(runs: list[dict]) -> list[dict]:
  """One row per setting (in SETTINGS order): mean and sample std over seeds.

  `runs`: report.load_run's records of the run folders (or run.json's results). The rows are
  report.summarize's, grouped by setting, with the comparison's fields added: setting, label,
  budget and rare_iou ({rare class: (mean, std)}).
  """
  rows = report.summarize(runs, group=_setting_of, order=[s.name for s in SETTINGS])
  rows = [row for row in rows if row["name"] in SETTINGS_BY_NAME]
  for row in rows:
    setting = SETTINGS_BY_NAME[row["name"]]
    row.update(setting=setting.name, label=setting.label, budget=setting.budget,
               rare_iou={c: row["iou"].get(c, (float("nan"),) * 2) for c in RARE_CLASSES})
  return rows


# The fields of a row that results.json keeps (the run records stay in its "runs").
SUMMARY_FIELDS = ("setting", "label", "budget", "seeds", "miou", "miou_std",
                  "labelled_fraction", "rare_iou", "seconds")


def domain_gap(rows: list[dict]) -> float | None:
  """mIoU points between full target supervision and source-only (None if either is missing)."""
  by_name = {row["setting"]: row for row in rows}
  if SOURCE_ONLY in by_name and "full" in by_name:
    return by_name["full"]["miou"] - by_name[SOURCE_ONLY]["miou"]
  return None


def table_columns() -> list[report.Column]:
  """report's columns as the comparison shows them: its labels and budgets, the rare classes."""
  return ([("setting", lambda row: row["setting"]), ("strategy", lambda row: row["label"]),
           ("budget", lambda row: row["budget"]), ("labelled", report.labelled_cell),
           ("mIoU", report.miou_cell)] +
          [report.class_column(name) for name in RARE_CLASSES] +
          [("seeds", report.count_cell), ("min per run", report.minutes_cell)])


def format_table(rows: list[dict]) -> str:
  """Markdown table: mIoU and the rare classes' IoU as mean ± sample std over seeds."""
  gap = domain_gap(rows)
  footer = (f"Domain gap (full supervision - source only): {gap:.1f} mIoU points."
            if gap is not None else "")
  return report.format_table(rows, table_columns(), footer=footer)


# The bounds: horizontal lines (colour, style) with a ± std band, not points on the budget axis.
BOUNDS = {SOURCE_ONLY: ("tab:gray", "--"), "full": ("black", ":"),
          "full_source": ("black", "-.")}


def plot(rows: list[dict], path: str) -> None:
  """Left: mIoU vs labelled fraction (log axis), one line per strategy, the bounds as bands.

  Right: the strategies that share the most common budget side by side (bars), since their
  points sit on top of each other in the left panel.
  """
  strategies = [r for r in rows if r["setting"] not in BOUNDS]
  budgets = [r["budget"] for r in strategies]
  common = max(dict.fromkeys(budgets), key=budgets.count) if budgets else None
  seeds = max((len(r["seeds"]) for r in rows), default=0)
  report.plot_rows(
      rows, path, curves=False, line_of=lambda row: row["label"], bounds=BOUNDS,
      emphasize=lambda label: label.startswith("RIPU"),
      bars=[r for r in strategies if r["budget"] == common],
      bar_label=lambda row: row["label"].replace(" (RA)", ""),
      bars_title=f"strategies at {common}",
      fraction_title=f"mIoU by budget (mean ± std over {seeds} seeds)")


def write_outputs(results: list[dict], workdir: str) -> list[dict]:
  """results.json, results.md and miou_vs_budget.png of the finished runs `results`: the table
  and the plot from their run folders (report.load_run), the runs' run.json in results.json."""
  rows = summarize([report.load_run(run_dir(workdir, r["seed"], r["setting"]))
                    for r in results])
  summary = [{field: row[field] for field in SUMMARY_FIELDS} for row in rows]
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"runs": results, "summary": summary, "domain_gap": domain_gap(rows)}, f,
              indent=1)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(format_table(rows))
  plot(rows, os.path.join(workdir, "miou_vs_budget.png"))
  return rows


def run_comparison(workdir: str, seeds: Sequence[int], settings: Sequence[Setting], *,
                   source_steps: int, adapt_steps: int, smoke: bool = False,
                   report: bool = False, progress_bars: bool = False) -> list[dict]:
  """Runs (or, with `report`, only tabulates) every seed x setting; returns the table's rows.

  `settings` as `resolve_settings` gives them (source_only first). Finished runs are read
  back, interrupted ones resumed; the outputs are rewritten after every run.
  """
  intervals = ROUNDS + max(s.warmup_rounds for s in settings)  # each round needs a step
  if source_steps < 1 or adapt_steps < intervals:
    raise ValueError(f"source_steps must be >= 1 and adapt_steps >= {intervals} ({ROUNDS} rounds"
                     f"{' after a warm-up' if intervals > ROUNDS else ''}), "
                     f"got {source_steps} and {adapt_steps}")
  os.makedirs(workdir, exist_ok=True)
  runs = [(seed, setting) for seed in seeds for setting in settings]
  results = []
  start = time.perf_counter()
  config_kwargs = dict(source_steps=source_steps, adapt_steps=adapt_steps, smoke=smoke,
                       progress_bars=progress_bars)
  for number, (seed, setting) in enumerate(runs, start=1):
    done = os.path.exists(os.path.join(run_dir(workdir, seed, setting.name), RESULT_FILE))
    print(f"[{number}/{len(runs)}] seed {seed} {setting.name}"
          f"{' (finished before)' if done else ' (not finished: left out)' if report else ''}",
          flush=True)
    if report and not done:
      continue
    if not done and setting.name != SOURCE_ONLY:
      ensure_source_model(seed, workdir, **config_kwargs)
    result = run_setting(setting, seed, workdir, **config_kwargs)
    results.append(result)
    print(f"    mIoU {result['miou']:.1f}, labelled {result['labelled_fraction']:.3%}, "
          f"{result['seconds'] / 60:.1f} min", flush=True)
    if not report:
      write_outputs(results, workdir)  # partial tables while the comparison runs
  if not results:
    print(f"no finished runs in {workdir} for these seeds and settings: run the same "
          "command without --report to train them")
    return []
  rows = write_outputs(results, workdir)
  print(format_table(rows))
  gap = domain_gap(rows)
  if gap is not None and gap < 15 and not smoke:
    print(f"WARNING: the domain gap is only {gap:.1f} mIoU points (< 15): the benchmark is too "
          "easy to tell strategies apart", flush=True)
  print(f"wrote {workdir}/results.md, results.json and miou_vs_budget.png "
        f"({(time.perf_counter() - start) / 60:.1f} min in this invocation)")
  return rows
