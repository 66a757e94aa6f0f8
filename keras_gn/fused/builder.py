"""Compile the fused Group Normalization op against the installed TensorFlow.

The C++ source (`custom_ops/group_norm_op.cc`, shipped inside this package)
is compiled on first use with the installed TensorFlow's own compile and link
flags (`tf.sysconfig`) into a cache directory, under a name keyed by the
TensorFlow version and a hash of the source, the compiler, the flags and the
CPU, so a new TensorFlow, a changed source or another machine sharing the
cache gets its own build. Builds go to a temporary file first and are moved
into place atomically, so concurrent processes (e.g. training workers) never
load a half-written library.

Environment:
    KERAS_GN_CACHE_DIR: cache directory (default `$XDG_CACHE_HOME/keras_gn`
        or `~/.cache/keras_gn`).
    CXX: the C++ compiler (default `g++`, else `c++`).
    KERAS_GN_MARCH: value for `-march=` (default `native`; e.g. `x86-64-v3`
        for a library shared by several machines).

Prebuild from the command line: `python -m keras_gn.fused build`.
"""

import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile

SOURCE = pathlib.Path(__file__).resolve().parent / "group_norm_op.cc"
LIBRARY_STEM = "keras_gn_group_norm_op"


class BuildError(RuntimeError):
    """The op could not be compiled; the message says why and what to do."""


def cache_dir():
    if os.environ.get("KERAS_GN_CACHE_DIR"):
        return pathlib.Path(os.environ["KERAS_GN_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "keras_gn"


def compiler():
    name = os.environ.get("CXX")
    if name:
        return shutil.which(name)
    return shutil.which("g++") or shutil.which("c++")


def _cpu_signature():
    """Identifies the instruction set a `-march=native` build targets."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((l for l in cpuinfo if l.startswith("flags")), "")
    except OSError:
        pass
    return platform.machine() + flags


def command(cxx, output):
    import tensorflow as tf

    march = os.environ.get("KERAS_GN_MARCH", "native")
    return (
        [cxx, "-std=c++17", "-O3", f"-march={march}", "-fopenmp-simd", "-shared", "-fPIC", "-w"]
        + tf.sysconfig.get_compile_flags()
        + [str(SOURCE), "-o", str(output)]
        + tf.sysconfig.get_link_flags()
    )


def library_path(cxx):
    """Where the library for this source, TensorFlow, compiler and CPU lives."""
    import tensorflow as tf

    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    for part in (version, " ".join(command(cxx, "OUT")), _cpu_signature()):
        key.update(part.encode())
    name = f"{LIBRARY_STEM}-tf{tf.__version__}-{key.hexdigest()[:16]}.so"
    return cache_dir() / "ops" / name


def build(force=False):
    """Returns the path of the compiled library, compiling it if needed.

    Raises:
        BuildError: when no compiler is found or the compilation fails.
    """
    if not SOURCE.exists():
        raise BuildError(
            f"the op source {SOURCE} is missing; reinstall keras-gn from its "
            "repository (pip install -e .)."
        )
    cxx = compiler()
    if cxx is None:
        raise BuildError(
            "no C++ compiler found (set CXX, or install g++, e.g. "
            "`apt-get install g++`)."
        )
    path = library_path(cxx)
    if path.exists() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    print("keras_gn: building the fused GroupNormalization op (once per TensorFlow version, about 20 s)...",
          file=sys.stderr, flush=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".so.tmp", delete=False) as tmp:
        partial = pathlib.Path(tmp.name)
    try:
        result = subprocess.run(command(cxx, partial), capture_output=True, text=True)
        if result.returncode != 0:
            raise BuildError(
                f"compiling {SOURCE.name} failed with {cxx}:\n{result.stderr[-4000:]}"
            )
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
