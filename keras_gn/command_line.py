"""What the package's absl commands (`python -m train`, `python -m
train.experiments`, `python -m zoo.convert`) share: a `--help` that lists
their flags, one line each, and exits 0.

They also set `TF_CPP_MIN_LOG_LEVEL=3` unless the user
set it, before TensorFlow is imported (importing this package imports it):
on a machine without a GPU, TensorFlow's CUDA build logs a `failed call to
cuInit` error at every start, which nobody can act on.
"""

import sys

HELP_ARGS = ("--help", "-h", "--helpshort", "--helpfull", "-?")


def flags_help(doc, modules):
    """The command's description and one line per flag of `modules`."""
    from absl import flags

    lines = [doc.strip(), "", "Flags:"]
    for module in modules:
        for flag in sorted(flags.FLAGS.get_flags_for_module(module), key=lambda f: f.name):
            default = "" if flag.default is None else f" (default: {flag.default_as_str.strip(chr(39))})"
            lines.append(f"  --{flag.name}: {' '.join(flag.help.split())}{default}")
    return "\n".join(lines)


def run(main, doc, *modules, argv=None):
    """`absl.app.run(main)`, with `--help` printing `doc` and the flags of
    `modules` (module names or objects) to stdout and exiting 0."""
    from absl import app

    argv = sys.argv if argv is None else argv
    if any(arg in HELP_ARGS for arg in argv[1:]):
        names = [m if isinstance(m, str) else m.__name__ for m in modules]
        print(flags_help(doc, names))
        sys.exit(0)
    app.run(main, argv=argv)
