"""Callbacks of a training run: an idempotent per-epoch log and throughput.

`EpochLog` keeps `history.json` ({epoch: metrics}) and rewrites `log.csv`
from it at every epoch end. Writing an epoch twice (an epoch repeated after
a restart) replaces its row, so a killed and resumed run logs each epoch
exactly once. It runs before `BackupAndRestore` in the callback list: if a
kill falls between the two, the epoch is repeated and its row rewritten,
never lost.
"""

import csv
import json
import os
import time

import keras


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
