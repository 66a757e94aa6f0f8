"""Resumable experiment sweeps over `python -m train`, and their report.

    # The paper's Figure 1 on CIFAR-10: ResNet-20, BN vs GN, 8 replicas,
    # 32/16/8/4/2 images per replica, learning rate 0.1 * N / 32.
    python -m train.experiments run --sweep=batch_size \\
        --data_dir=../shared/data/cifar10-jpeg.tar.gz --epochs=10 \\
        --results=docs/batch_size_sweep.jsonl --runs_dir=runs/sweep

    python -m train.experiments report --results=docs/batch_size_sweep.jsonl \\
        --output_dir=docs

`run` trains each configuration not yet in the results file, one after
another, as a separate `python -m train` process, and appends one JSON line
per finished run. Killed at any point, it continues when started again: a
finished run is skipped, an interrupted one resumes from its training
backup (same `--runs_dir`). The sweep can be spread over several sessions.

`report` writes `<output_dir>/<name>.csv`, `<name>.md` (a table beside the
paper's numbers) and `<name>.png` (test error vs images per replica, BN vs
GN, in the style of the paper's Figure 1; needs matplotlib).
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
flags.DEFINE_enum("sweep", "batch_size", ["batch_size"], "Which sweep to run.")
flags.DEFINE_string("data_dir", None, "CIFAR-10 image folder or tar archive (run).")
flags.DEFINE_bool("fake_data", False, "Random images instead of --data_dir (smoke tests).")
flags.DEFINE_integer("epochs", 10, "Epochs per run (the committed sweep: 10, CPU budget).")
flags.DEFINE_integer("steps_per_epoch", None, "Cap on steps per epoch (smoke tests).")
flags.DEFINE_list("per_replica_batch_sizes", ["32", "16", "8", "4", "2"], "Images per replica.")
flags.DEFINE_list("norms", ["bn", "gn"], "Normalizations.")
flags.DEFINE_list("seeds", ["0"], "Seeds.")
flags.DEFINE_integer("replicas", 8, "Logical CPU devices (replicas), as the paper's 8 GPUs.")
flags.DEFINE_integer("steps_per_execution", 20, "Passed to train: 2.5x faster at 2 images per replica on CPU.")
flags.DEFINE_string("results", "docs/batch_size_sweep.jsonl", "The results file (JSON lines).")
flags.DEFINE_string("runs_dir", "runs/sweep", "Where the runs' model directories go.")
flags.DEFINE_string("output_dir", "docs", "Where `report` writes its files.")

# How the runs' weight decay works (`zoo.optimizers`): recorded with each run,
# so that a results file never mixes runs of different optimizers. The first
# runs of this sweep used Keras' decoupled decay, about 10x weaker.
WEIGHT_DECAY = "l2 through momentum"

# The paper's Figure 1 / Table 2 (ResNet-50, ImageNet, 8 GPUs): top-1 error.
PAPER = {"bn": {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
         "gn": {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1}}


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

    @property
    def run_id(self):
        return f"resnet20_{self.norm}_b{self.per_replica_batch_size}_e{self.epochs}_s{self.seed}"


def configs():
    return [Config(norm, int(b), FLAGS.epochs, int(seed))
            for seed in FLAGS.seeds for b in FLAGS.per_replica_batch_sizes for norm in FLAGS.norms]


def read_results(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def train_command(config, model_dir):
    command = [sys.executable, "-m", "train", "--model=resnet20_gn", f"--norm={config.norm}",
               "--recipe=cifar", f"--base_learning_rate={base_learning_rate(FLAGS.replicas)}", "--strategy=mirrored",
               f"--num_cpu_devices={FLAGS.replicas}", f"--per_replica_batch_size={config.per_replica_batch_size}",
               f"--epochs={config.epochs}", f"--seed={config.seed}", f"--model_dir={model_dir}", "--verbose=2",
               f"--steps_per_execution={FLAGS.steps_per_execution}"]
    if FLAGS.fake_data:
        command.append("--fake_data")
    else:
        command += ["--dataset=folder", f"--data_dir={FLAGS.data_dir}"]
    if FLAGS.steps_per_epoch:
        command.append(f"--steps_per_epoch={FLAGS.steps_per_epoch}")
    return command


def run_sweep():
    if not FLAGS.fake_data and not (FLAGS.data_dir and os.path.exists(FLAGS.data_dir)):
        raise app.UsageError(f"--data_dir={FLAGS.data_dir} does not exist (or pass --fake_data).")
    results = read_results(FLAGS.results)
    other = [r["run_id"] for r in results if r.get("weight_decay") != WEIGHT_DECAY]
    if other:
        raise app.UsageError(
            f"{FLAGS.results} holds runs made with another weight decay than {WEIGHT_DECAY!r} "
            f"({', '.join(other)}); move that file aside or pass another --results.")
    done = {r["run_id"] for r in results}
    pending = [c for c in configs() if c.run_id not in done]
    print(f"{len(done)} runs in {FLAGS.results}; {len(pending)} to go.", flush=True)
    for i, config in enumerate(pending, 1):
        model_dir = os.path.join(FLAGS.runs_dir, config.run_id)
        print(f"[{i}/{len(pending)}] {config.run_id}", flush=True)
        subprocess.run(train_command(config, model_dir), check=True)
        with open(os.path.join(model_dir, "results.json")) as f:
            result = json.load(f)
        record = dict(
            run_id=config.run_id, model="resnet20", **dataclasses.asdict(config),
            replicas=result["replicas"], global_batch_size=result["global_batch_size"],
            learning_rate=result["peak_learning_rate"], steps_per_epoch=result["steps_per_epoch"],
            final_test_error=result["final_top1_error"],
            median_test_error_last5=result["median_top1_error_last5"],
            wall_seconds=result["wall_seconds_all_runs"], images_per_second=result["images_per_second"],
            dataset=result["dataset"], weight_decay=WEIGHT_DECAY,
        )
        pathlib.Path(FLAGS.results).parent.mkdir(parents=True, exist_ok=True)
        with open(FLAGS.results, "a") as f:
            f.write(json.dumps(record) + "\n")


def report(results, output_dir, name="batch_size_sweep"):
    """Writes the CSV, markdown table and figure of a batch-size sweep."""
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    fields = ["norm", "per_replica_batch_size", "epochs", "seed", "final_test_error",
              "median_test_error_last5", "wall_seconds", "images_per_second", "learning_rate",
              "global_batch_size", "replicas", "dataset", "weight_decay"]
    with open(output_dir / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(results, key=lambda r: (r["norm"], -r["per_replica_batch_size"], r["seed"])))

    # Every size of the paper's figure, so that a sweep in progress shows its gaps.
    sizes = sorted({r["per_replica_batch_size"] for r in results} | set(PAPER["bn"]), reverse=True)

    def cell(norm, size):
        errors = [r["median_test_error_last5"] for r in results
                  if r["norm"] == norm and r["per_replica_batch_size"] == size]
        return f"{sum(errors) / len(errors):.1f}" if errors else ""

    def listed(key):
        return ", ".join(str(v) for v in sorted({r[key] for r in results}))

    lines = [f"CIFAR-10 test error (%) of ResNet-20, median of the last 5 epochs (mean over seeds); "
             f"epochs: {listed('epochs')}; seeds: {listed('seed')}; replicas: {listed('replicas')}; "
             f"{len(results)} runs (- : not run yet). The paper's ImageNet ResNet-50 top-1 error beside it.", "",
             "| images per replica | " + " | ".join(str(s) for s in sizes) + " |",
             "| --- |" + " ---: |" * len(sizes)]
    for norm in ("bn", "gn"):
        lines.append(f"| {norm.upper()} (this sweep) | " + " | ".join(cell(norm, s) or "-" for s in sizes) + " |")
    for norm in ("bn", "gn"):
        lines.append(f"| {norm.upper()} (paper, ImageNet) | "
                     + " | ".join(str(PAPER[norm].get(s, "")) for s in sizes) + " |")
    (output_dir / f"{name}.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.6))
    for norm, style in (("bn", "o-"), ("gn", "s-")):
        points = [(s, float(cell(norm, s))) for s in sizes if cell(norm, s)]
        if points:
            axis.plot([p[0] for p in points], [p[1] for p in points], style, label=norm.upper())
    axis.set_xscale("log", base=2)
    axis.set_xticks(sizes, [str(s) for s in sizes])
    axis.invert_xaxis()
    axis.set_xlabel("images per replica (8 replicas)")
    axis.set_ylabel("test error (%)")
    axis.set_title(f"ResNet-20 on CIFAR-10, {listed('epochs')} epochs: BN vs GN")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(output_dir / f"{name}.png", dpi=120)
    plt.close(figure)


def main(argv):
    if len(argv) != 2 or argv[1] not in ("run", "report"):
        raise app.UsageError("usage: python -m train.experiments run|report [flags]")
    if argv[1] == "run":
        run_sweep()
    else:
        results = read_results(FLAGS.results)
        if not results:
            raise app.UsageError(f"{FLAGS.results} has no results yet; run the sweep first.")
        report(results, FLAGS.output_dir)
        print(f"wrote {FLAGS.output_dir}/batch_size_sweep.csv, .md and .png")


if __name__ == "__main__":
    app.run(main)
