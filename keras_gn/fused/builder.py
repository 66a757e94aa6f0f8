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

With CUDA (`build(cuda=True)`, what `keras_gn.fused.load()` asks for where
TensorFlow sees a GPU), the CUDA kernels (`group_norm_kernels.cu`) are
compiled with nvcc and linked into the same library, which then also holds
DEVICE_GPU kernels for both ops. The nvcc is, in order: `KERAS_GN_NVCC` (taken
as given), pip's `nvidia-cuda-nvcc-cu<N>` (its `bin/nvcc`, if the wheel has
one: the CUDA 12 wheels ship only ptxas), `$CUDA_HOME/bin/nvcc`, `nvcc` on the
PATH, `/usr/local/cuda*/bin/nvcc`; only one whose CUDA major version is the
one TensorFlow was built with is used.

    KERAS_GN_NVCC: the nvcc to use (no version check).
    KERAS_GN_CUDA_ARCHS: compute capabilities to compile for, e.g. `80;90`
        (default: those of the visible GPUs, else 80; PTX for the highest
        is embedded too).

Prebuild from the command line: `python -m keras_gn.fused build [--cuda]`.
"""

import functools
import glob
import hashlib
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile

SOURCE = pathlib.Path(__file__).resolve().parent / "group_norm_op.cc"
CUDA_SOURCE = SOURCE.with_name("group_norm_kernels.cu")
CUDA_HEADER = SOURCE.with_name("group_norm_kernels.h")
LIBRARY_STEM = "keras_gn_group_norm_op"
CUDA_LIBRARY_STEM = "keras_gn_group_norm_op_cuda"


class BuildError(RuntimeError):
    """The op could not be compiled; the message says why and what to do."""


def compile_failure(what, output):
    """A `BuildError` whose first line, all that the layer's one-line warning
    shows, names the compiler's first error; the output's end follows."""
    first = next((line.strip() for line in output.splitlines() if "error:" in line), None)
    summary = f"{what} ({first})" if first else what
    return BuildError(f"{summary}:\n{output[-4000:]}")


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


@functools.lru_cache(maxsize=None)
def isa_exclusions(cxx, march):
    """`-mno-...` flags for the instructions `-march=march` enables that the
    installed TensorFlow's headers cannot be compiled for.

    AVX512-FP16 (Sapphire Rapids and later): TensorFlow's bundled Eigen then
    compiles its `PacketMathFP16.h`, which g++ rejects ("expected initializer
    before '<' token"). The op does no half-precision arithmetic (float16 is
    converted to float32 for the math), so nothing is lost without it.
    """
    defined = subprocess.run([cxx, f"-march={march}", "-dM", "-E", "-x", "c++", os.devnull],
                             capture_output=True, text=True).stdout
    return ["-mno-avx512fp16"] if "__AVX512FP16__" in defined else []


def command(cxx, output, cuda=None):
    """The compile-and-link command of the op library; with `cuda` (a
    `CudaToolchain` and the kernels' object file), the GPU kernels too."""
    import tensorflow as tf

    march = os.environ.get("KERAS_GN_MARCH", "native")
    cuda_flags, cuda_inputs, cuda_libs = [], [], []
    if cuda is not None:
        toolchain, objects = cuda
        cuda_flags = ["-DGOOGLE_CUDA=1", f"-I{SOURCE.parent}", f"-I{toolchain.host_include}"]
        cuda_inputs = [str(objects)]
        cuda_libs = toolchain.link_flags
    return (
        [cxx, "-std=c++17", "-O3", f"-march={march}", *isa_exclusions(cxx, march)]
        + ["-fopenmp-simd", "-shared", "-fPIC", "-w"]
        + tf.sysconfig.get_compile_flags()
        + cuda_flags
        + [str(SOURCE)]
        + cuda_inputs
        + ["-o", str(output)]
        + tf.sysconfig.get_link_flags()
        + cuda_libs
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


def build(force=False, cuda=False, nvcc=None, archs=None):
    """Returns the path of the compiled library, compiling it if needed.

    Args:
        force: rebuild even if a cached library exists.
        cuda: also compile the CUDA kernels (`group_norm_kernels.cu`) and
            register the ops' GPU kernels; needs no GPU to build.
        nvcc: with `cuda`, the nvcc to use, taken as given (default:
            `find_nvcc()`).
        archs: with `cuda`, compute capabilities such as `("80", "90")`
            (default: `cuda_archs()`).

    Raises:
        BuildError: when no compiler (or, with `cuda`, no suitable nvcc) is
            found or the compilation fails.
    """
    if cuda:
        return _build_cuda(force, nvcc, archs)
    _check_sources(SOURCE)
    cxx = _required_compiler()
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
            raise compile_failure(f"compiling {SOURCE.name} failed with {cxx}", result.stderr)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------- CUDA


def tf_cuda_major():
    """The CUDA major version TensorFlow was built with, or None."""
    import tensorflow as tf

    version = tf.sysconfig.get_build_info().get("cuda_version")
    return int(str(version).split(".")[0]) if version else None


def nvcc_version(nvcc):
    """(major, minor) of an nvcc, or None if it does not run."""
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _pip_nvcc_candidates():
    """bin/nvcc of pip's nvidia-cuda-nvcc-cu* packages (the `nvidia` namespace)."""
    try:
        import nvidia
    except ImportError:
        return []
    found = []
    for base in getattr(nvidia, "__path__", []):  # nvidia/cuda_nvcc/bin/nvcc; CUDA 13: nvidia/cu13/bin/nvcc
        found += sorted(pathlib.Path(base).glob("*/bin/nvcc"))
    return found


def _nvcc_candidates():
    found = _pip_nvcc_candidates()
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            found.append(pathlib.Path(os.environ[variable]) / "bin" / "nvcc")
    if shutil.which("nvcc"):
        found.append(pathlib.Path(shutil.which("nvcc")))
    found += [pathlib.Path(p) for p in sorted(glob.glob("/usr/local/cuda*/bin/nvcc"), reverse=True)]
    unique = []
    for path in found:
        if path.is_file() and path.resolve() not in [p.resolve() for p in unique]:
            unique.append(path)
    return unique


def find_nvcc():
    """Returns an nvcc for TensorFlow's CUDA major version.

    Raises:
        BuildError: when there is none; the message lists what was found.
    """
    if os.environ.get("KERAS_GN_NVCC"):
        return pathlib.Path(os.environ["KERAS_GN_NVCC"])
    major = tf_cuda_major()
    if major is None:
        raise BuildError("this TensorFlow was not built with CUDA.")
    others = []
    for path in _nvcc_candidates():
        version = nvcc_version(path)
        if version and version[0] == major:
            return path
        others.append(f"{path} (CUDA {'.'.join(map(str, version)) if version else '?'})")
    hint = (
        f"no nvcc for CUDA {major} (TensorFlow's CUDA version) found"
        + (f"; found only {', '.join(others)}" if others else "")
        + f". Install the CUDA {major} toolkit (pip's nvidia-cuda-nvcc-cu{major} wheels carry no "
        "nvcc driver, only ptxas) or set KERAS_GN_NVCC."
    )
    raise BuildError(hint)


def cuda_archs():
    """Compute capabilities to build for: KERAS_GN_CUDA_ARCHS, else the
    visible GPUs', else 80."""
    if os.environ.get("KERAS_GN_CUDA_ARCHS"):
        return tuple(a.strip().replace(".", "") for a in re.split(r"[;, ]+", os.environ["KERAS_GN_CUDA_ARCHS"]) if a.strip())
    import tensorflow as tf

    archs = set()
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability:
            archs.add(f"{capability[0]}{capability[1]}")
    return tuple(sorted(archs, key=int)) or ("80",)


class CudaToolchain:
    """nvcc, its version, and where the CUDA runtime's headers and library are."""

    def __init__(self, nvcc):
        self.nvcc = pathlib.Path(nvcc)
        self.version = nvcc_version(self.nvcc)
        if self.version is None:
            raise BuildError(f"{self.nvcc} does not run (`nvcc --version` failed).")
        root = _nvcc_root(self.nvcc)
        tf_include = _tf_cuda_include()
        # The host compiler sees TensorFlow's own CUDA headers where it ships them.
        self.host_include = tf_include or root / "include"
        self.link_flags = self._cudart(root)

    def _cudart(self, root):
        machine = platform.machine()
        for directory in (root / "lib64", root / "lib", root / "targets" / f"{machine}-linux" / "lib"):
            if (directory / "libcudart_static.a").exists():
                return [f"-L{directory}", "-lcudart_static", "-ldl", "-lrt", "-lpthread"]
        try:
            import nvidia.cuda_runtime as runtime

            for base in runtime.__path__:
                directory = pathlib.Path(base) / "lib"
                name = f"libcudart.so.{self.version[0]}"
                if (directory / name).exists():
                    return [f"-L{directory}", f"-l:{name}", f"-Wl,-rpath,{directory}"]
        except ImportError:
            pass
        raise BuildError(
            f"no CUDA runtime library next to {self.nvcc} (libcudart_static.a) or from "
            f"pip (nvidia-cuda-runtime-cu{self.version[0]})."
        )

    def compile_command(self, cxx, archs, output):
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
        gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
        return (
            [str(self.nvcc), "-std=c++17", "-O3", "-ccbin", cxx, "-Xcompiler", "-fPIC", "-w"]
            + gencode
            + ["-c", str(CUDA_SOURCE), "-o", str(output)]
        )


def _nvcc_root(nvcc):
    """The toolkit directory of an nvcc, also behind a wrapper script (nvcc's
    own `_HERE_` in its dry run)."""
    with tempfile.TemporaryDirectory() as work:
        source = pathlib.Path(work) / "empty.cu"
        source.write_text("")
        try:
            out = subprocess.run([str(nvcc), "--dryrun", "-c", str(source), "-o", str(source) + ".o"],
                                 capture_output=True, text=True, timeout=60)
            match = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, re.MULTILINE)
            if match:
                return pathlib.Path(match.group(1).strip()).resolve().parent
        except (OSError, subprocess.SubprocessError):
            pass
    return pathlib.Path(nvcc).resolve().parent.parent


def _tf_cuda_include():
    import tensorflow as tf

    include = pathlib.Path(tf.sysconfig.get_include()) / "third_party" / "gpus" / "cuda" / "include"
    return include if (include / "cuda_runtime_api.h").exists() else None


def cuda_library_path(cxx, toolchain, archs):
    """Where the CUDA-enabled library for these sources and tools lives."""
    import tensorflow as tf

    key = hashlib.sha256()
    for source in (SOURCE, CUDA_SOURCE, CUDA_HEADER):
        key.update(source.read_bytes())
    cxx_version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    nvcc_out = subprocess.run([str(toolchain.nvcc), "--version"], capture_output=True, text=True).stdout
    parts = (
        cxx_version,
        nvcc_out,
        " ".join(toolchain.compile_command(cxx, archs, "OBJ")),
        " ".join(command(cxx, "OUT", (toolchain, "OBJ"))),
        _cpu_signature(),
    )
    for part in parts:
        key.update(part.encode())
    name = f"{CUDA_LIBRARY_STEM}-tf{tf.__version__}-{key.hexdigest()[:16]}.so"
    return cache_dir() / "ops" / name


def _check_sources(*sources):
    for source in sources:
        if not source.exists():
            raise BuildError(
                f"the op source {source} is missing; reinstall keras-gn from its "
                "repository (pip install -e .)."
            )


def _required_compiler():
    cxx = compiler()
    if cxx is None:
        raise BuildError(
            "no C++ compiler found (set CXX, or install g++, e.g. "
            "`apt-get install g++`)."
        )
    return cxx


def _build_cuda(force, nvcc, archs):
    _check_sources(SOURCE, CUDA_SOURCE, CUDA_HEADER)
    cxx = _required_compiler()
    toolchain = CudaToolchain(nvcc if nvcc is not None else find_nvcc())
    archs = tuple(archs) if archs else cuda_archs()
    path = cuda_library_path(cxx, toolchain, archs)
    if path.exists() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"keras_gn: building the fused GroupNormalization op with CUDA kernels for sm_{', sm_'.join(archs)} "
        "(once per TensorFlow version, a minute or more)...",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(dir=path.parent) as work:
        objects = pathlib.Path(work) / "group_norm_kernels.o"
        partial = pathlib.Path(work) / "library.so"
        steps = (
            (toolchain.compile_command(cxx, archs, objects), f"compiling {CUDA_SOURCE.name} failed with {toolchain.nvcc}"),
            (command(cxx, partial, (toolchain, objects)), f"compiling {SOURCE.name} with CUDA failed with {cxx}"),
        )
        for step, failure in steps:
            result = subprocess.run(step, capture_output=True, text=True)
            if result.returncode != 0:
                raise compile_failure(failure, result.stdout + result.stderr)
        os.replace(partial, path)
    return path
