"""The README is true: every shell command in it (and in docs/) is written
the one way that runs after the set-up commands, and each program, module
and script it names exists and answers `--help`."""

import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = pathlib.Path(sys.executable).parent  # the set-up's .venv/bin
SET_UP = "python3 -m venv .venv"


def shell_commands(page):
    """Each command of the page's ```bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        for command in re.sub(r"\\\n\s*", " ", block).splitlines():
            command = command.split("  #")[0].strip()
            if command and not command.startswith("#"):
                commands += [part.strip() for part in command.split("&&")]
    return commands


def all_commands():
    return sorted({(page.name, command) for page in PAGES for command in shell_commands(page)})


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 260


@pytest.mark.parametrize("page, command", all_commands())
def test_commands_use_the_set_up_s_programs(page, command):
    program = shlex.split(command)[0]
    assert command.startswith(SET_UP) or program.startswith(".venv/bin/"), (
        f"{page}: {command!r} should run {program!r} as .venv/bin/{program.split('/')[-1]}")


def _help_command(command):
    """The `--help` call that shows `command`'s program exists (None for
    the set-up's own steps)."""
    words = shlex.split(command)
    if command.startswith(SET_UP):
        assert shutil.which("python3")
        return None
    program = BIN / words[0].removeprefix(".venv/bin/")
    if program.name == "pip":
        assert program.exists()
        return None
    if program.name.startswith("python"):
        if words[1] == "-m":
            return (sys.executable, "-m", words[2], "--help")
        assert (ROOT / words[1]).is_file(), f"{words[1]} does not exist"
        return (sys.executable, words[1], "--help")
    subcommand = [w for w in words[1:2] if not w.startswith("-")]
    return (str(program), *subcommand, "--help")


@pytest.mark.slow
@pytest.mark.parametrize("help_command", sorted({c for _, command in all_commands()
                                                 if (c := _help_command(command)) is not None}))
def test_every_program_and_module_answers_help(help_command):
    result = subprocess.run(help_command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-1000:] + result.stderr[-2000:]
    assert "--" in result.stdout  # it lists options


@pytest.mark.slow
def test_the_quickstart_runs(tmp_path):
    result = subprocess.run([sys.executable, "examples/quickstart.py", "--test_images=64", "--steps=2",
                             f"--output_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1. resnet20_gn(weights='cifar10'): " in result.stdout
    assert "reloaded, same outputs: True" in result.stdout
