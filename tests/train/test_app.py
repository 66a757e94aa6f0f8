"""End-to-end tests of `python -m train`: real CIFAR-10, TFDS mock data,
8 replicas on logical CPU devices (global batch, per-replica BN), two
multi-worker processes on localhost, and a run killed with SIGKILL and
resumed. Each run is a separate process, as a user would start it."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # every test is a training process

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
SMOKE = ["--model=resnet20_gn", "--fake_data", "--verbose=2"]


def train(*args, env=None, timeout=600, check=True):
    result = subprocess.run([sys.executable, "-m", "train", *args], capture_output=True, text=True,
                            env={**ENV, **(env or {})}, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def results(model_dir):
    with open(os.path.join(model_dir, "results.json")) as f:
        return json.load(f)


def test_a_few_steps_on_real_cifar10(tmp_path):
    path = os.environ.get("KERAS_GN_CIFAR10")
    if not path or not os.path.exists(path):
        pytest.skip("set KERAS_GN_CIFAR10 to cifar10-jpeg.tar.gz")
    run = train("--model=resnet20_gn", "--dataset=folder", f"--data_dir={path}", "--per_replica_batch_size=32",
                "--steps_per_epoch=4", "--epochs=2", f"--model_dir={tmp_path}", "--verbose=2")
    # What a person reads: rounded errors, totals that add up, no warning about
    # a shuffle argument nobody passed.
    assert re.search(r"Top-1 test error: \d+\.\d\d% after the last epoch, \d+\.\d\d% the median of the last 2; "
                     r"2 epochs in \d+\.\d min", run.stdout), run.stdout[-500:]
    assert "shuffle=True" not in run.stderr
    r = results(tmp_path)
    assert r["wall_seconds_all_runs"] >= r["wall_seconds_this_run"] > 0
    assert r["num_classes"] == 10 and r["dataset"].startswith("folder:")
    assert (r["epochs_completed"], r["total_steps"], r["global_batch_size"]) == (2, 8, 32)
    assert r["recipe"]["name"] == "cifar" and len(r["history"]) == 2
    assert 0 <= r["final_top1_error"] <= 100 and r["images_per_second"] > 0
    for name in ("log.csv", "history.json", "final.weights.h5", "latest.weights.h5", "tensorboard"):
        assert os.path.exists(tmp_path / name), name


def test_cosine_schedule_and_cutout_are_recorded(tmp_path):
    train(*SMOKE, "--schedule=cosine", "--cutout=16", "--per_replica_batch_size=16", "--steps_per_epoch=2",
          "--epochs=2", f"--model_dir={tmp_path}")
    r = results(tmp_path)
    assert (r["recipe"]["schedule"], r["recipe"]["cutout"]) == ("cosine", 16)
    assert (r["flags"]["schedule"], r["flags"]["cutout"]) == ("cosine", 16)
    # At each epoch's start: the peak (0.1 * 16 / 128), then half of it after 2 of the 4 steps.
    np.testing.assert_allclose([h["learning_rate"] for h in r["history"]], [0.0125, 0.00625], rtol=1e-5)


def test_tfds_mock_data(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        import tensorflow_datasets as tfds
        from absl import flags
        from train import app
        flags.FLAGS(["train", "--dataset=cifar10", "--model=resnet20_gn", "--per_replica_batch_size=8",
                     "--steps_per_epoch=2", "--epochs=1", "--model_dir={tmp_path}", "--verbose=2"])
        with tfds.testing.mock_data(num_examples=32):
            app.main([])
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    r = results(tmp_path)
    assert r["dataset"] == "tfds:cifar10" and r["epochs_completed"] == 1 and r["total_steps"] == 2


def test_epochs_train_exactly_their_steps_when_executions_do_not_divide_them(tmp_path):
    """Keras would run 2 executions of 4 = 8 steps an epoch; 6 means 3 a call."""
    run = train(*SMOKE, "--per_replica_batch_size=4", "--steps_per_epoch=6", "--steps_per_execution=4",
                "--epochs=2", f"--model_dir={tmp_path}")
    assert "--steps_per_execution=4 does not divide the 6 steps per epoch; using 3." in run.stdout
    r = results(tmp_path)
    assert (r["steps_per_execution"], r["total_steps"], r["optimizer_steps"]) == (3, 12, 12)


def test_eight_replicas_on_logical_cpu_devices(tmp_path):
    train(*SMOKE, "--strategy=mirrored", "--num_cpu_devices=8", "--per_replica_batch_size=2",
          "--steps_per_epoch=2", "--epochs=1", "--norm=bn", f"--model_dir={tmp_path}")
    r = results(tmp_path)
    assert (r["replicas"], r["global_batch_size"], r["total_steps"]) == (8, 16, 2)
    # The paper's rule: 0.1 per 128 images (CIFAR) of global batch.
    assert r["peak_learning_rate"] == pytest.approx(0.1 * 16 / 128)


CPU_DEVICES_WITH_A_GPU = textwrap.dedent("""
    import tensorflow as tf
    from train import strategies
    listed = tf.config.list_logical_devices
    fake_gpu = tf.config.LogicalDevice("/device:GPU:0", "GPU")
    tf.config.list_logical_devices = lambda kind=None: [fake_gpu] if kind == "GPU" else listed(kind)
    # Record the devices the strategy is asked for (no devices: TF picks the GPUs).
    tf.distribute.MirroredStrategy = lambda devices=None, **kwargs: devices
    print("DEVICES", strategies.make("mirrored", num_cpu_devices=8))
""")


def test_cpu_devices_asked_for_are_used_where_a_gpu_is_visible():
    """--num_cpu_devices=8 means 8 replicas, also on a machine with a GPU
    (MirroredStrategy() alone would run 1 replica on the GPU)."""
    result = subprocess.run([sys.executable, "-c", CPU_DEVICES_WITH_A_GPU], capture_output=True, text=True,
                            env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    devices = result.stdout.split("DEVICES", 1)[1]
    assert devices.count("CPU:") == 8 and "GPU" not in devices, devices


BN_PER_REPLICA = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    from absl import flags
    from train import app, recipe, strategies
    flags.FLAGS(["train", "--model=resnet20_gn", "--norm=bn", "--fake_data"] + sys.argv[1:])
    strategy = strategies.make("mirrored", num_cpu_devices=8)
    with strategy.scope():
        model = app.build_model(recipe.CIFAR, 10)
    bn = model.get_layer("conv1_norm")
    # Replica i sees features with mean 10 * i.
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.random.normal((2, 4, 4, 16), seed=1) + 10.0 * ctx.replica_id_in_sync_group)
    outputs = strategy.run(lambda x: tf.reduce_mean(bn(x, training=True)), args=(values,))
    print("MEANS", [float(v) for v in strategy.experimental_local_results(outputs)])
""")


@pytest.mark.parametrize("sync_bn", [False, True])
def test_batch_norm_statistics_are_per_replica_unless_synchronized(sync_bn):
    args = ["--sync_bn"] if sync_bn else []
    result = subprocess.run([sys.executable, "-c", BN_PER_REPLICA, *args], capture_output=True, text=True,
                            env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    means = json.loads(result.stdout.split("MEANS", 1)[1].strip())
    assert len(means) == 8
    if sync_bn:  # normalized by the global batch: replica i's outputs keep its offset
        assert np.ptp(means) > 1.0
    else:  # each replica normalized by its own batch: zero mean everywhere
        np.testing.assert_allclose(means, 0.0, atol=1e-4)


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_two_processes_agree_on_the_weights(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "train", *SMOKE, "--strategy=multi_worker", "--per_replica_batch_size=8",
             "--steps_per_epoch=3", "--epochs=2", f"--model_dir={tmp_path}"],
            env={**ENV, "TF_CONFIG": tf_config}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [w.communicate(timeout=600) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, out[-2000:] + err[-4000:]
    r = results(tmp_path)
    assert (r["replicas"], r["global_batch_size"], r["epochs_completed"]) == (2, 16, 2)
    import h5py

    def weights(path):
        with h5py.File(path) as f:
            arrays = []
            f.visititems(lambda name, obj: arrays.append((name, obj[()])) if isinstance(obj, h5py.Dataset) else None)
            return arrays

    chief, other = weights(tmp_path / "final.weights.h5"), weights(tmp_path / "worker_1" / "final.weights.h5")
    assert len(chief) == len(other) > 50
    for (name, a), (_, b) in zip(chief, other):
        np.testing.assert_array_equal(a, b, err_msg=name)


def _killed(args, until, env=None, delay=0.0):
    """Starts `python -m train` and SIGKILLs it `delay` seconds after
    `until()` is true."""
    process = subprocess.Popen([sys.executable, "-m", "train", *args], env={**ENV, **(env or {})},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not until() and process.poll() is None:
        time.sleep(0.2)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _check_finished(model_dir, steps=30):
    r = results(model_dir)
    assert r["epochs_completed"] == 3 and r["total_steps"] == 3 * steps
    assert r["optimizer_steps"] == 3 * steps  # the optimizer's state came back, no epoch trained twice
    assert [h["steps"] for h in r["history"]] == [steps] * 3
    rows = (model_dir / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["0", "1", "2"]


def test_killed_run_resumes_without_duplicated_or_lost_epochs(tmp_path):
    args = [*SMOKE, "--per_replica_batch_size=32", "--steps_per_epoch=30", "--epochs=3", f"--model_dir={tmp_path}"]
    history = tmp_path / "history.json"
    # Killed 1 s into the second epoch.
    _killed(args, lambda: history.exists() and "0" in json.loads(history.read_text() or "{}"), delay=1.0)
    done = json.loads(history.read_text())
    assert list(done) == ["0"], f"killed after epochs {list(done)}: make the epochs longer"
    resumed = train(*args)
    assert "3 epochs in" in resumed.stdout
    backups = sorted(p.name for p in (tmp_path / "backup").iterdir())
    assert backups == ["epoch-2", "epoch-3"], backups  # the newest two, nothing partial
    assert "Resuming from the backup after epoch 1 of 3" in resumed.stdout
    assert "Epoch 2/3" in resumed.stdout and "Epoch 1/3" not in resumed.stdout
    _check_finished(tmp_path)
    # The same command again finds the run finished.
    again = train(*args)
    assert "Resuming from the backup after epoch 3 of 3" in again.stdout and "Epoch " not in again.stdout


@pytest.mark.parametrize("stage", ["state", "rename"])
def test_a_kill_while_the_backup_is_written_resumes_from_the_last_complete_one(tmp_path, stage):
    # Paused (then killed) while writing the backup after epoch 2: half a
    # weights file and no state, or both written but not renamed into place.
    args = [*SMOKE, "--per_replica_batch_size=32", "--steps_per_epoch=30", "--epochs=3", f"--model_dir={tmp_path}"]
    _killed(args, (tmp_path / "backup" / f"paused-at-{stage}").exists,
            env={"KERAS_GN_TEST_PAUSE_BACKUP": f"{stage}:2"})
    assert (tmp_path / "backup" / f"paused-at-{stage}").exists()
    resumed = train(*args)
    assert "Resuming from the backup after epoch 1 of 3" in resumed.stdout
    assert "Epoch 2/3" in resumed.stdout and "Epoch 1/3" not in resumed.stdout
    assert not list((tmp_path / "backup").glob(".partial-*"))
    _check_finished(tmp_path)


def test_a_damaged_backup_falls_back_to_the_one_before(tmp_path):
    args = [*SMOKE, "--per_replica_batch_size=32", "--steps_per_epoch=30", "--epochs=3", f"--model_dir={tmp_path}"]
    _killed(args, (tmp_path / "backup" / "paused-at-rename").exists, env={"KERAS_GN_TEST_PAUSE_BACKUP": "rename:3"})
    weights = tmp_path / "backup" / "epoch-2" / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])  # e.g. a disk error
    resumed = train(*args)
    assert "backup/epoch-2 cannot be restored" in resumed.stderr
    assert "Resuming from the backup after epoch 1 of 3" in resumed.stdout
    _check_finished(tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--model=resnet51_gn"], "--model=resnet51_gn is not a zoo model; valid: "),
    (["--dataset=folder"], "--dataset=folder needs --data_dir"),
    (["--dataset=cifar11"], "--dataset=cifar11 is not a TFDS dataset"),
    (["--fake_data", "--per_replica_batch_size=2000"], "more than the 1024 training examples"),
    (["--num_cpu_devices=4"], "--num_cpu_devices needs --strategy=mirrored"),
    (["--init=in1k_nothing"], "--init=in1k_nothing: weights='in1k_nothing' is neither None"),
    (["--cutout=40"], "--cutout=40; valid: 0 (none) to the image size, 32."),
    (["--schedule=linear"], "value should be one of <step|cosine>"),
    (["--epochs=0"], "flag --epochs=0: 0 is not a positive integer"),
    (["--epochs=-2"], "flag --epochs=-2"),
    (["--steps_per_epoch=-1"], "flag --steps_per_epoch=-1"),
    (["--per_replica_batch_size=0"], "flag --per_replica_batch_size=0"),
    (["--weight_decay=-1"], "flag --weight_decay=-1: -1.0 is not a non-negative number"),
    (["--verbose=3"], "flag --verbose=3"),
    (["--dataset=../data/cifar10-jpeg.tar.gz"], "--dataset=../data/cifar10-jpeg.tar.gz is a path, not a TFDS dataset "
     "name: for an image folder or tar archive use --dataset=folder --data_dir=../data/cifar10-jpeg.tar.gz"),
])
def test_bad_flags_fail_at_start_with_what_is_valid(tmp_path, args, message):
    result = train(f"--model_dir={tmp_path}", *args, check=False, timeout=300)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_mixed_precision_and_fine_tuning_from_zoo_weights(tmp_path):
    import zoo

    zoo.resnet20_gn().save_weights(tmp_path / "pretrained.weights.h5")
    run = train(*SMOKE, "--mixed_precision=mixed_bfloat16", f"--init={tmp_path / 'pretrained.weights.h5'}",
                "--per_replica_batch_size=8", "--steps_per_epoch=2", "--epochs=1", f"--model_dir={tmp_path / 'run'}")
    assert "backbone weights loaded, a new 10-class head, no weight decay on gamma/beta" in run.stdout
    assert ", 1 epoch, peak learning rate" in run.stdout
    r = results(tmp_path / "run")
    assert r["flags"]["mixed_precision"] == "mixed_bfloat16" and r["epochs_completed"] == 1
    assert np.isfinite(r["history"][0]["loss"])


def test_a_corrupt_image_stops_the_run_with_its_name(tmp_path):
    from tests.train.test_data import make_folder

    folder = make_folder(tmp_path / "pets", per_class=4)
    corrupt = folder / "train" / "dog" / "2.png"
    corrupt.write_bytes(corrupt.read_bytes()[:40])  # truncated
    result = train("--model=resnet20_gn", "--dataset=folder", f"--data_dir={folder}", "--recipe=cifar",
                   "--per_replica_batch_size=2", "--epochs=1", "--verbose=2", f"--model_dir={tmp_path / 'run'}",
                   check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"1 image file(s) cannot be decoded:\n  {corrupt}\nRemove or replace them" in output
