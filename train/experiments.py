"""Resumable experiment sweeps over `python -m train`, and their report.

    # The paper's Figure 1 on CIFAR-10: ResNet-20, BN vs GN, 8 replicas,
    # 32/16/8/4/2 images per replica, learning rate 0.1 * N / 32.
    python -m train.experiments run --sweep=batch_size \\
        --data_dir=../shared/data/cifar10-jpeg.tar.gz --epochs=10 \\
        --results=docs/batch_size_sweep.jsonl --runs_dir=runs/sweep

    python -m train.experiments report --results=docs/batch_size_sweep.jsonl \\
        --output_dir=docs

    # The paper's Table 3 on the same setup: GN ResNet-20 at 32 images per
    # replica with 8, 4, 2, 1 (= LN) groups, then 16, 8, 4, 2, 1 (= IN)
    # channels per group.
    python -m train.experiments run --sweep=groups \\
        --data_dir=../shared/data/cifar10-jpeg.tar.gz --epochs=10 \\
        --results=docs/group_ablation.jsonl --runs_dir=runs/sweep
    python -m train.experiments report --sweep=groups \\
        --results=docs/group_ablation.jsonl --output_dir=docs

`run` trains each configuration not yet in the results file, one after
another, as a separate `python -m train` process, and appends one JSON line
per finished run (its errors, wall time and per-epoch error curves). Killed
at any point, it continues when started again: a finished run is skipped,
an interrupted one resumes from its training backup (same `--runs_dir`).
The sweep can be spread over several sessions.

`report` writes `<output_dir>/batch_size_sweep.csv`, `.md` (a table beside
the paper's numbers, and one of the last epoch's training error) and `.png`
(test error vs images per replica, BN vs GN, in the style of the paper's
Figure 1, beside the training error; needs matplotlib); with
`--sweep=groups`, `group_ablation.csv` and `.md` (beside the paper's
Table 3).
"""

import csv
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("sweep", "batch_size", ["batch_size", "groups"],
                  "batch_size: BN vs GN over images per replica (Figure 1); groups: GN's grouping (Table 3).")
flags.DEFINE_string("data_dir", None, "CIFAR-10 image folder or tar archive (run).")
flags.DEFINE_bool("fake_data", False, "Random images instead of --data_dir (smoke tests).")
flags.DEFINE_integer("epochs", 10, "Epochs per run (the committed sweep: 10, CPU budget).")
flags.DEFINE_enum("schedule", "step", ["step", "cosine"], "Learning-rate schedule of every run (train's --schedule).")
flags.DEFINE_integer("gn_group_size", None, "--sweep=batch_size: GN channels per group (default: the "
                     "builders' 32 groups, 8/16/32 in ResNet-20's stages).")
flags.DEFINE_integer("steps_per_epoch", None, "Cap on steps per epoch (smoke tests).")
flags.DEFINE_list("per_replica_batch_sizes", ["32", "16", "8", "4", "2"], "Images per replica.")
flags.DEFINE_list("norms", ["bn", "gn"], "Normalizations.")
flags.DEFINE_list("seeds", ["0"], "Seeds.")
# The ablation's groupings for ResNet-20 (stages of 16, 32, 64 channels): the
# paper's Table 3 values that divide 16.
GROUP_COUNTS = (8, 4, 2, 1)
GROUP_SIZES = (16, 8, 4, 2, 1)
flags.DEFINE_list("group_counts", [str(g) for g in GROUP_COUNTS],
                  "--sweep=groups: fixed numbers of groups (1 = LN).")
flags.DEFINE_list("group_sizes", [str(g) for g in GROUP_SIZES],
                  "--sweep=groups: fixed channels per group (1 = IN).")
flags.DEFINE_integer("ablation_batch_size", 32, "--sweep=groups: images per replica.")
flags.DEFINE_integer("replicas", 8, "Logical CPU devices (replicas), as the paper's 8 GPUs.")
flags.DEFINE_bool("gn_on_one_device", False, "Train the GN runs on one device with the "
                  "replicas' global batch (GN normalizes each image alone, so the split does not change the "
                  "updates: tested; 1.3-2.8x faster on a CPU). BN runs stay on --replicas replicas.")
flags.DEFINE_integer("steps_per_execution", 20, "Passed to train: 2.5x faster at 2 images per replica on CPU.")
flags.DEFINE_string("results", None, "The results file (JSON lines). Default: docs/<report name>.jsonl, "
                    "batch_size_sweep or group_ablation.")
flags.DEFINE_string("runs_dir", "runs/sweep", "Where the runs' model directories go.")
flags.DEFINE_string("output_dir", "docs", "Where `report` writes its files (named after --results).")
flags.DEFINE_string("background", None, "report, --sweep=batch_size: the results file of an earlier sweep, "
                    "drawn faded behind this one in the figure (e.g. the 10-epoch sweep).")

# How the runs' weight decay works (`zoo.optimizers`): recorded with each run,
# so that a results file never mixes runs of different optimizers. The first
# runs of this sweep used Keras' decoupled decay, about 10x weaker.
WEIGHT_DECAY = "l2 through momentum"

# The paper's Figure 1 / Table 2 (ResNet-50, ImageNet, 8 GPUs): top-1 error.
PAPER = {"bn": {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
         "gn": {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1}}
# The paper's Table 3 (GN ResNet-50, ImageNet, 32 images per GPU): top-1
# error by number of groups and by channels per group.
PAPER_GROUPS = {64: 24.6, 32: 24.1, 16: 24.6, 8: 24.4, 4: 24.6, 2: 24.7, 1: 25.3}
PAPER_GROUP_SIZES = {64: 24.4, 32: 24.5, 16: 24.2, 8: 24.3, 4: 24.8, 2: 25.6, 1: 28.4}
RESNET20_WIDTHS = (16, 32, 64)  # channels of its three stages
# Each sweep's report (and default results file) name.
REPORT_NAMES = {"batch_size": "batch_size_sweep", "groups": "group_ablation"}


def results_path():
    return FLAGS.results or f"docs/{REPORT_NAMES[FLAGS.sweep]}.jsonl"


def sweep_of(record):
    """The sweep a result belongs to (the first batch-size runs predate the field)."""
    return record.get("sweep", "batch_size")


def base_learning_rate(replicas):
    """The CIFAR recipe's base rate (per 128 images of global batch, R * N)
    that gives the paper's 0.1 * N / 32 with N images per replica."""
    return 0.1 * 128 / (32 * replicas)


@dataclasses.dataclass(frozen=True)
class Config:
    norm: str
    per_replica_batch_size: int
    epochs: int
    seed: int
    groups: int = None  # GN: fixed number of groups ...
    group_size: int = None  # ... or fixed channels per group; neither: the builders' default

    schedule: str = "step"
    # GN only: the replicas' global batch on one device. Not part of the
    # run's name: the same run either way (a GN run may even resume across).
    one_device: bool = False

    def __post_init__(self):
        if self.one_device and self.norm != "gn":
            raise ValueError(f"one_device=True is for GN runs, not norm={self.norm!r}: BN's statistics "
                             "depend on the images per replica.")

    @property
    def run_id(self):
        grouping = (f"_g{self.groups}" if self.groups is not None else "") + (
            f"_cpg{self.group_size}" if self.group_size is not None else "")
        schedule = "" if self.schedule == "step" else f"_{self.schedule}"
        return (f"resnet20_{self.norm}{grouping}_b{self.per_replica_batch_size}_e{self.epochs}{schedule}"
                f"_s{self.seed}")


def configs():
    seeds = [int(seed) for seed in FLAGS.seeds]
    if FLAGS.sweep == "groups":
        size = FLAGS.ablation_batch_size
        one_device = FLAGS.gn_on_one_device
        return ([Config("gn", size, FLAGS.epochs, seed, groups=int(g), schedule=FLAGS.schedule,
                        one_device=one_device) for seed in seeds for g in FLAGS.group_counts]
                + [Config("gn", size, FLAGS.epochs, seed, group_size=int(s), schedule=FLAGS.schedule,
                          one_device=one_device) for seed in seeds for s in FLAGS.group_sizes])
    return [Config(norm, int(b), FLAGS.epochs, seed, schedule=FLAGS.schedule,
                   group_size=FLAGS.gn_group_size if norm == "gn" else None,
                   one_device=FLAGS.gn_on_one_device and norm == "gn")
            for seed in seeds for b in FLAGS.per_replica_batch_sizes for norm in FLAGS.norms]


def read_results(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def train_command(config, model_dir):
    """The `python -m train` command of a run: R replicas of N images, or
    one device with the R x N images (`config.one_device`); the learning
    rate 0.1 * N / 32 either way (the recipe scales it by the global batch)."""
    if config.one_device:
        devices = ["--strategy=default", f"--per_replica_batch_size={FLAGS.replicas * config.per_replica_batch_size}"]
    else:
        devices = ["--strategy=mirrored", f"--num_cpu_devices={FLAGS.replicas}",
                   f"--per_replica_batch_size={config.per_replica_batch_size}"]
    command = [sys.executable, "-m", "train", "--model=resnet20_gn", f"--norm={config.norm}",
               "--recipe=cifar", f"--base_learning_rate={base_learning_rate(FLAGS.replicas)}", *devices,
               f"--epochs={config.epochs}", f"--seed={config.seed}", f"--model_dir={model_dir}", "--verbose=2",
               f"--steps_per_execution={FLAGS.steps_per_execution}", f"--schedule={config.schedule}"]
    if config.groups is not None:
        command.append(f"--groups={config.groups}")
    if config.group_size is not None:
        command.append(f"--group_size={config.group_size}")
    if FLAGS.fake_data:
        command.append("--fake_data")
    else:
        command += ["--dataset=folder", f"--data_dir={FLAGS.data_dir}"]
    if FLAGS.steps_per_epoch:
        command.append(f"--steps_per_epoch={FLAGS.steps_per_epoch}")
    return command


def curves(result):
    """A run's error curves from its results.json, in % per epoch: the test
    error after each epoch, and the training error as Keras logs it (the
    running error over the epoch's augmented batches, the model in training
    mode, so BN normalizes with the batch's statistics)."""
    history = result["history"]
    return dict(test_errors=[100.0 * (1.0 - h["val_accuracy"]) for h in history],
                train_errors=[100.0 * (1.0 - h["accuracy"]) for h in history])


def run_sweep():
    if not FLAGS.fake_data and not (FLAGS.data_dir and os.path.exists(FLAGS.data_dir)):
        raise app.UsageError(f"--data_dir={FLAGS.data_dir} does not exist (or pass --fake_data).")
    path = results_path()
    results = read_results(path)
    other = [r["run_id"] for r in results if r.get("weight_decay") != WEIGHT_DECAY]
    if other:
        raise app.UsageError(
            f"{path} holds runs made with another weight decay than {WEIGHT_DECAY!r} "
            f"({', '.join(other)}); move that file aside or pass another --results.")
    other = [r["run_id"] for r in results if sweep_of(r) != FLAGS.sweep]
    if other:
        raise app.UsageError(
            f"{path} holds runs of another sweep than --sweep={FLAGS.sweep} ({', '.join(other)}); "
            f"pass --results=docs/{REPORT_NAMES[FLAGS.sweep]}.jsonl.")
    other = [r["run_id"] for r in results if (r.get("schedule", "step"), r["epochs"]) != (FLAGS.schedule, FLAGS.epochs)]
    if other:
        raise app.UsageError(
            f"{path} holds runs of another schedule or length than --schedule={FLAGS.schedule} "
            f"--epochs={FLAGS.epochs} ({', '.join(other)}); pass another --results.")
    done = {r["run_id"] for r in results}
    pending = [c for c in configs() if c.run_id not in done]
    print(f"{len(done)} runs in {path}; {len(pending)} to go.", flush=True)
    for i, config in enumerate(pending, 1):
        model_dir = os.path.join(FLAGS.runs_dir, config.run_id)
        print(f"[{i}/{len(pending)}] {config.run_id}", flush=True)
        subprocess.run(train_command(config, model_dir), check=True)
        with open(os.path.join(model_dir, "results.json")) as f:
            result = json.load(f)
        record = dict(
            run_id=config.run_id, sweep=FLAGS.sweep, model="resnet20", **dataclasses.asdict(config),
            # The configuration's replicas; `devices`: those it trained on (1: one_device).
            replicas=FLAGS.replicas, devices=result["replicas"], global_batch_size=result["global_batch_size"],
            learning_rate=result["peak_learning_rate"], steps_per_epoch=result["steps_per_epoch"],
            final_test_error=result["final_top1_error"],
            median_test_error_last5=result["median_top1_error_last5"],
            wall_seconds=result["wall_seconds_all_runs"], images_per_second=result["images_per_second"],
            dataset=result["dataset"], weight_decay=WEIGHT_DECAY,
            gn_groups=result.get("gn_groups"),  # {channels: groups}; runs before it was recorded: None
            **curves(result),
        )
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


CSV_FIELDS = ["norm", "per_replica_batch_size", "epochs", "seed", "final_test_error",
              "median_test_error_last5", "final_train_error", "wall_seconds", "images_per_second",
              "learning_rate", "global_batch_size", "replicas", "devices", "dataset", "weight_decay"]


def _final_train_error(record):
    """The training error of a run's last epoch (None for a run recorded
    without its curves)."""
    return record["train_errors"][-1] if record.get("train_errors") else None


def _write_csv(records, path, fields):
    """One row per run, with its last epoch's training error."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, "final_train_error": _final_train_error(r)} for r in records)


def _mean(values):
    """Mean over seeds, as table text ("" without values)."""
    values = [v for v in values if v is not None]
    return f"{sum(values) / len(values):.1f}" if values else ""


def _mean_error(records):
    """Mean over seeds of the runs' median test errors, as table text."""
    return _mean([r["median_test_error_last5"] for r in records])


def _on_one_device(results):
    """A sentence naming the runs trained on one device with the replicas'
    global batch (`--gn_on_one_device`), or "" if none were."""
    runs = sorted((r for r in results if r.get("devices", r["replicas"]) != r["replicas"]),
                  key=lambda r: -r["per_replica_batch_size"])
    if not runs:
        return ""
    sizes = ", ".join(dict.fromkeys(str(r["per_replica_batch_size"]) for r in runs))
    return (f" GN at {sizes} images per replica trained on one device with the replicas' global batch: "
            "GN normalizes each image alone, so the split does not change its updates (tested).")


def _listed(results, key):
    return ", ".join(str(v) for v in sorted({r[key] for r in results}))


def report_name():
    """The report's file names: those of the results file (default: the sweep's)."""
    return pathlib.Path(results_path()).stem


def report_batch_size(results, output_dir, name=REPORT_NAMES["batch_size"], background=()):
    """Writes `<name>.csv`, `.md` (tables) and `.png` (figure) of the
    batch-size sweep; `background`: an earlier sweep's results, drawn faded
    in the figure."""
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ordered = sorted(results, key=lambda r: (r["norm"], -r["per_replica_batch_size"], r["seed"]))
    _write_csv(ordered, output_dir / f"{name}.csv", CSV_FIELDS)

    # Every size of the paper's figure, so that a sweep in progress shows its gaps.
    sizes = sorted({r["per_replica_batch_size"] for r in results} | set(PAPER["bn"]), reverse=True)

    def runs(norm, size, records=results):
        return [r for r in records if r["norm"] == norm and r["per_replica_batch_size"] == size]

    def test_error(norm, size, records=results):
        return _mean_error(runs(norm, size, records))

    def train_error(norm, size, records=results):
        return _mean([_final_train_error(r) for r in runs(norm, size, records)])

    def listed(key):
        return _listed(results, key)

    def rows(cell):
        return [f"| {norm.upper()} (this sweep) | " + " | ".join(cell(norm, s) or "-" for s in sizes) + " |"
                for norm in ("bn", "gn")]

    heading = ["| images per replica | " + " | ".join(str(s) for s in sizes) + " |",
               "| --- |" + " ---: |" * len(sizes)]
    lines = [f"CIFAR-10 test error (%) of ResNet-20, median of the last 5 epochs (mean over seeds); "
             f"epochs: {listed('epochs')}; seeds: {listed('seed')}; replicas: {listed('replicas')}; "
             f"{len(results)} runs (- : not run yet). The paper's ImageNet ResNet-50 top-1 error beside it."
             + _on_one_device(results), "",
             *heading, *rows(test_error)]
    for norm in ("bn", "gn"):
        lines.append(f"| {norm.upper()} (paper, ImageNet) | "
                     + " | ".join(str(PAPER[norm].get(s, "")) for s in sizes) + " |")
    lines += ["", "Training error (%) in the last epoch (mean over seeds): the running error over the epoch's "
              "augmented batches, the model in training mode (BN normalizing with each batch's statistics), as "
              "Keras logs it.", "", *heading, *rows(train_error)]
    (output_dir / f"{name}.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for axis, cell, title in ((axes[0], test_error, "test error, median of the last 5 epochs"),
                              (axes[1], train_error, "training error, last epoch")):
        for records, alpha, label in ((background, 0.25, f" ({_listed(background, 'epochs')} epochs)"),
                                      (results, 1.0, f" ({listed('epochs')} epochs)" if background else "")):
            for norm, style, color in (("bn", "o-", "tab:blue"), ("gn", "s-", "tab:orange")):
                points = [(s, float(cell(norm, s, records))) for s in sizes if cell(norm, s, records)]
                if points:
                    axis.plot([p[0] for p in points], [p[1] for p in points], style, color=color, alpha=alpha,
                              label=norm.upper() + label)
        axis.set_xscale("log", base=2)
        axis.set_xticks(sizes, [str(s) for s in sizes])
        axis.invert_xaxis()
        axis.set_xlabel("images per replica (8 replicas)")
        axis.set_ylabel("error (%)")
        axis.set_title(title, fontsize="medium")
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small")
        axis.grid(alpha=0.3)
    figure.suptitle(f"ResNet-20 on CIFAR-10, {listed('epochs')} epochs: BN vs GN")
    figure.tight_layout()
    figure.savefig(output_dir / f"{name}.png", dpi=120)
    plt.close(figure)


def report_groups(results, output_dir, name=REPORT_NAMES["groups"]):
    """Writes the CSV and markdown tables of the group-division ablation,
    beside the paper's Table 3."""
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ordered = sorted(results, key=lambda r: (r["group_size"] is not None, -(r["groups"] or r["group_size"]),
                                             r["seed"]))
    _write_csv(ordered, output_dir / f"{name}.csv", ["groups", "group_size", "gn_groups"] + CSV_FIELDS)

    def per_stage(records):
        """Groups in the 16/32/64-channel stages, as the runs recorded them."""
        grouping = next((r["gn_groups"] for r in records if r.get("gn_groups")), None)
        return "/".join(str(grouping[str(c)]) for c in RESNET20_WIDTHS) if grouping else "-"

    def table(key, values, paper, label, extreme):
        runs = {v: [r for r in results if r[key] == v] for v in values}
        heading = [f"{v} (={extreme})" if v == 1 else str(v) for v in values]
        return ["| " + label + " | " + " | ".join(heading) + " |",
                "| --- |" + " ---: |" * len(values),
                "| GN (this ablation) | " + " | ".join(_mean_error(runs[v]) or "-" for v in values) + " |",
                "| groups in the 16/32/64-channel stages | " + " | ".join(per_stage(runs[v]) for v in values) + " |",
                "| GN (paper, ImageNet) | " + " | ".join(str(paper.get(v, "")) for v in values) + " |"]

    group_counts = sorted({r["groups"] for r in results if r["groups"] is not None}
                          | set(GROUP_COUNTS), reverse=True)
    group_sizes = sorted({r["group_size"] for r in results if r["group_size"] is not None}
                         | set(GROUP_SIZES), reverse=True)
    lines = [f"CIFAR-10 test error (%) of GN ResNet-20 by grouping, median of the last 5 epochs (mean over "
             f"seeds); epochs: {_listed(results, 'epochs')}; seeds: {_listed(results, 'seed')}; replicas: "
             f"{_listed(results, 'replicas')}; images per replica: {_listed(results, 'per_replica_batch_size')}; "
             f"{len(results)} runs (- : not run yet). The paper's Table 3 (ImageNet ResNet-50, top-1 error) "
             "beside it." + _on_one_device(results), "",
             *table("groups", group_counts, PAPER_GROUPS, "groups (G)", "LN"), "",
             *table("group_size", group_sizes, PAPER_GROUP_SIZES, "channels per group", "IN")]
    (output_dir / f"{name}.md").write_text("\n".join(lines) + "\n")


def main(argv):
    if len(argv) != 2 or argv[1] not in ("run", "report"):
        raise app.UsageError("usage: python -m train.experiments run|report [flags]")
    if argv[1] == "run":
        run_sweep()
    else:
        path = results_path()
        results = [r for r in read_results(path) if sweep_of(r) == FLAGS.sweep]
        if not results:
            raise app.UsageError(f"{path} has no results of --sweep={FLAGS.sweep} yet; run the sweep first.")
        if FLAGS.sweep == "batch_size":
            background = read_results(FLAGS.background) if FLAGS.background else ()
            report_batch_size(results, FLAGS.output_dir, report_name(), background)
        else:
            report_groups(results, FLAGS.output_dir, report_name())
        print(f"wrote {FLAGS.output_dir}/{report_name()}.csv and .md"
              + (" and .png" if FLAGS.sweep == "batch_size" else ""))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # see keras_gn.command_line
    from keras_gn import command_line

    command_line.run(main, __doc__, __name__)
