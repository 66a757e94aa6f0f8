"""tf.distribute strategies for `--strategy=default|mirrored|multi_worker|tpu`.

- `mirrored`: one replica per GPU; `--num_cpu_devices=K` instead splits the
  CPU into K logical devices and runs one replica on each (GPUs, if any, are
  then left idle), so the paper's 8-replica setup runs for real anywhere (8
  logical CPUs standing in for 8 GPUs). BatchNormalization statistics stay
  per replica unless `--sync_bn`.
- `multi_worker`: `MultiWorkerMirroredStrategy`, configured by `TF_CONFIG`
  on each machine. To run N workers, start the same command on each with
  `TF_CONFIG='{"cluster": {"worker": ["host0:port", ..., "hostN-1:port"]},
  "task": {"type": "worker", "index": i}}'` (worker 0 is the chief: it
  writes the results; the others write under `<model_dir>/worker_<i>`).
- `tpu`: `TPUStrategy` for `--tpu` (a name or grpc:// address).
"""

import json
import os

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def split_cpu(num_devices):
    """Splits the physical CPU into `num_devices` logical devices. Must run
    before TensorFlow initializes its devices."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])


def make(name, num_cpu_devices=0, tpu=None):
    if name not in STRATEGIES:
        raise ValueError(f"--strategy={name} is not one of {STRATEGIES}.")
    if num_cpu_devices > 1:
        split_cpu(num_cpu_devices)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # Logical CPU devices asked for are used even where GPUs are visible:
        # MirroredStrategy() would pick the GPUs and silently change the
        # number of replicas (and with it the global batch).
        if num_cpu_devices > 1 or not tf.config.list_logical_devices("GPU"):
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
            return tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multi_worker needs TF_CONFIG (see `python -m train --help`).")
        _work_around_keras_multi_worker_fit()
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def task():
    """(task type, index) of this process: ("worker", 0) without TF_CONFIG."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    return config.get("type", "worker"), int(config.get("index", 0))


def is_chief():
    kind, index = task()
    return kind == "chief" or (kind == "worker" and index == 0)


def _work_around_keras_multi_worker_fit():
    """Keras 3's `fit` fails under MultiWorkerMirroredStrategy
    (keras-team/keras#20585): it reduces a distributed batch with
    `strategy.reduce` before its symbolic build, and reduces scalar logs along
    axis 0. Build from the first local replica's batch (only its shapes
    matter), and reduce logs locally: Keras' metrics are already synchronized
    across workers."""
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_keras_gn_patched", False):
        return
    original = trainer.TensorFlowTrainer._maybe_symbolic_build

    def symbolic_build(self, iterator=None, data_batch=None):
        if iterator is None:
            return original(self, iterator, data_batch)
        for _, _, it in iterator:
            data_batch = next(it)
            break
        strategy = self.distribute_strategy
        data_batch = tf.nest.map_structure(
            lambda x: strategy.experimental_local_results(x)[0]
            if isinstance(x, tf.distribute.DistributedValues) else x, data_batch)
        return original(self, None, data_batch)

    trainer.TensorFlowTrainer._maybe_symbolic_build = symbolic_build
    trainer._collective_all_reduce_multi_worker = lambda strategy: False
    trainer._keras_gn_patched = True
