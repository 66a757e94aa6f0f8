"""Callbacks of a training run: an idempotent per-epoch log and throughput,
and a backup that a killed run resumes from.

`EpochLog` keeps `history.json` ({epoch: metrics}) and rewrites `log.csv`
from it at every epoch end. Writing an epoch twice (an epoch repeated after
a restart) replaces its row, so a killed and resumed run logs each epoch
exactly once. It runs before `Backup` in the callback list: if a kill falls
between the two, the epoch is repeated and its row rewritten, never lost.

`Backup` replaces `keras.callbacks.BackupAndRestore`, which writes its
weights and then its metadata in place: a kill during the first write left
a truncated file that no restart could load, and one between the two writes
made the resumed run train an extra epoch.
"""

import csv
import json
import os
import pathlib
import shutil
import time

import keras
from absl import logging


def _write_atomically(path, text):
    partial = f"{path}.tmp"
    with open(partial, "w") as f:
        f.write(text)
    os.replace(partial, path)


def read_history(path):
    if not os.path.exists(path):
        return {}
    return {int(k): v for k, v in json.loads(open(path).read()).items()}


class EpochLog(keras.callbacks.Callback):
    def __init__(self, directory, global_batch, steps_per_epoch):
        super().__init__()
        self.directory = directory
        self.json_path = os.path.join(directory, "history.json")
        self.csv_path = os.path.join(directory, "log.csv")
        self.global_batch, self.steps_per_epoch = global_batch, steps_per_epoch
        self.history = read_history(self.json_path)

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._train_end = None
        self._learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_test_begin(self, logs=None):  # the epoch's evaluation starts
        if self._train_end is None:
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        end = time.perf_counter()
        train_seconds = (self._train_end or end) - self._start
        record = {k: float(v) for k, v in (logs or {}).items()}
        record.update(epoch_seconds=end - self._start, train_seconds=train_seconds,
                      steps=self.steps_per_epoch,
                      images_per_second=self.global_batch * self.steps_per_epoch / train_seconds,
                      learning_rate=self._learning_rate)  # at the epoch's start
        self.history[epoch] = record
        _write_atomically(self.json_path, json.dumps(self.history, indent=1))
        keys = sorted({k for r in self.history.values() for k in r})
        lines = [["epoch"] + keys] + [[e] + [r.get(k, "") for k in keys]
                                       for e, r in sorted(self.history.items())]
        with open(f"{self.csv_path}.tmp", "w", newline="") as f:
            csv.writer(f).writerows(lines)
        os.replace(f"{self.csv_path}.tmp", self.csv_path)


class Backup(keras.callbacks.Callback):
    """The training state after every epoch, written so that a kill at any
    moment leaves a backup to resume from.

    Each backup is a folder `<directory>/epoch-<k>` (k: epochs completed)
    holding `model.weights.h5` (the weights and the optimizer's state) and
    `state.json` (`{"epochs_completed": k}`). It is written under a
    temporary name and renamed into place, so a folder with a final name is
    complete; the newest two are kept. At the start of training the newest
    backup that loads is restored (a damaged one, e.g. by a full disk, is
    reported and the one before it used), training continues at its epoch,
    and one line says so. Backups stay after training ends, so the same
    command run again finds the run finished and trains nothing more.

    `KERAS_GN_TEST_PAUSE_BACKUP=<stage>:<k>` (tests only) makes the write
    after epoch k stop at `state` (the weights file half written, as a kill
    during the write leaves it; the state not written) or `rename` (both
    written, not yet renamed into place), after creating
    `<directory>/paused-at-<stage>`, so that a test can kill it there.
    """

    KEEP = 2

    def __init__(self, directory, epochs):
        super().__init__()
        self.directory = pathlib.Path(directory)
        self.epochs = epochs
        self._pause = os.environ.get("KERAS_GN_TEST_PAUSE_BACKUP")

    def backups(self):
        """Complete backups, newest first: (epochs completed, folder)."""
        if not self.directory.is_dir():
            return []
        found = [(int(p.name.split("-", 1)[1]), p) for p in self.directory.glob("epoch-*")
                 if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
        return sorted(found, reverse=True)

    def on_train_begin(self, logs=None):
        for partial in self.directory.glob(".partial-*"):  # left by a killed write
            shutil.rmtree(partial, ignore_errors=True)
        for completed, folder in self.backups():
            try:
                state = json.loads((folder / "state.json").read_text())
                if state["epochs_completed"] != completed:
                    raise ValueError(f"state.json says {state['epochs_completed']} epochs")
                optimizer = self.model.optimizer
                if optimizer is not None and not optimizer.built:
                    optimizer.build(self.model.trainable_variables)
                self.model.load_weights(folder / "model.weights.h5")
            except (OSError, ValueError, KeyError) as error:
                logging.warning("The backup %s cannot be restored (%s); trying the one before it.",
                                folder, str(error).splitlines()[0])
                continue
            self.model._initial_epoch = completed
            print(f"Resuming from the backup after epoch {completed} of {self.epochs} ({folder}).",
                  flush=True)
            return

    def on_epoch_end(self, epoch, logs=None):
        completed = epoch + 1
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.directory / f".partial-{os.getpid()}-{completed}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        self.model.save_weights(partial / "model.weights.h5")
        self._maybe_pause("state", completed, partial)
        (partial / "state.json").write_text(json.dumps({"epochs_completed": completed}))
        self._maybe_pause("rename", completed, partial)
        final = self.directory / f"epoch-{completed}"
        shutil.rmtree(final, ignore_errors=True)  # an epoch trained again after a restore
        os.replace(partial, final)
        for _, old in self.backups()[self.KEEP:]:
            shutil.rmtree(old, ignore_errors=True)

    def _maybe_pause(self, stage, completed, partial):
        if self._pause == f"{stage}:{completed}":
            if stage == "state":  # a truncated weights file, as a kill mid-write leaves
                weights = partial / "model.weights.h5"
                weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
            (self.directory / f"paused-at-{stage}").touch()
            time.sleep(3600)
