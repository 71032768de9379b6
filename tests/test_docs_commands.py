"""Every command the documentation shows parses: each `python SCRIPT.py ARGS` (or `torchrun ... SCRIPT.py
ARGS`) in README.md's fenced bash blocks and in docs/*.md (fenced blocks and inline code) is given to that
script's own argument parser, without running the script.

The parser comes from the script's `build_parser()`; a script without one (one that others edit) is
started with argparse's parse_args intercepted, so its main() hands over its parser before doing anything.
`--config FILE` is parsed as a flag, not read. A command is skipped, with the reason, where the docs put
a placeholder in place of a whole argument (`...`, `DIR`, `<file>`, `$VAR`): there is nothing to parse.
"""
import argparse
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SEPARATORS = {"&&", "||", ";", "|", "&"}
PLACEHOLDER = re.compile(r"^(?:--\w+=)?(?:[A-Z][A-Z0-9_]+|.*(?:\.\.\.|…).*|<[^>]+>|\$\w+|\$\{\w+\})$")


def shell_lines(text: str, fenced_only_bash: bool):
    """(line number, command line) of the fenced code blocks of a markdown text, and of its inline code
    spans that start with `python ` unless `fenced_only_bash` (then: ```bash blocks only). Heredoc bodies
    are left out, continued lines (a trailing backslash) joined, a leading `$ ` prompt dropped."""
    fence, heredoc, pending, start = None, None, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            if stripped.startswith("```"):
                fence = stripped[3:].strip()
            elif not fenced_only_bash:
                yield from ((number, span) for span in re.findall(r"`(python [^`]+)`", line))
            continue
        if stripped.startswith("```"):
            fence = None
            continue
        if fenced_only_bash and fence != "bash":
            continue
        if heredoc is not None:
            heredoc = None if stripped == heredoc else heredoc
            continue
        marker = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if marker:
            heredoc = marker.group(1)
        start = start or number
        pending += stripped.removeprefix("$ ")
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        yield start, pending
        pending, start = "", 0


def script_commands(line: str):
    """(script, args) of every command of a shell line that runs a repository script with python or torchrun."""
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        tokens = list(lexer)
    except ValueError:
        return
    command = []
    for token in tokens + [";"]:
        if token not in SEPARATORS and not token.startswith("<<"):
            command.append(token)
            continue
        while command and re.match(r"^\w+=", command[0]):  # VAR=value before the command
            command.pop(0)
        if command and command[0] in ("python", "python3", "torchrun"):
            scripts = [i for i, word in enumerate(command) if word.endswith(".py")]
            if scripts and (command[0] == "torchrun" or scripts[0] == 1):
                yield command[scripts[0]], command[scripts[0] + 1:]
        command = []


def documented_commands() -> list:
    found = []
    for doc in DOCS:
        for number, line in shell_lines(doc.read_text(encoding="utf-8"), fenced_only_bash=doc.name == "README.md"):
            for script, args in script_commands(line):
                found.append((f"{doc.relative_to(ROOT)}:{number}", script, args))
    return found


COMMANDS = documented_commands()
_PARSERS = {}


class _Handed(Exception):
    """Raised by the intercepted parse_args, carrying the parser a script's main() built."""


def parser_of(script: str) -> argparse.ArgumentParser:
    """The script's argument parser: build_parser(), or the one its main() builds (main stops at parse_args)."""
    if script in _PARSERS:
        return _PARSERS[script]
    path = ROOT / script
    spec = importlib.util.spec_from_file_location("doc_" + re.sub(r"\W", "_", script.removesuffix(".py")), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "build_parser"):
        parser = module.build_parser()
    else:
        def hand_over(self, args=None, namespace=None):
            raise _Handed(self)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(argparse.ArgumentParser, "parse_args", hand_over)
            patch.setattr(sys, "argv", [str(path)])
            with pytest.raises(_Handed) as handed:
                module.main()
        parser = handed.value.args[0]
    _PARSERS[script] = parser
    return parser


def test_the_docs_show_commands_of_the_scripts():
    scripts = {script for _, script, _ in COMMANDS}
    assert {"1-pretrain.py", "3-full_sft.py", "export_model.py", "eval_ceval.py", "2-eval.py"} <= scripts
    assert all((ROOT / script).is_file() for script in scripts), sorted(s for s in scripts if not (ROOT / s).is_file())


@pytest.mark.parametrize("where,script,args", COMMANDS, ids=[f"{w} {s}" for w, s, _ in COMMANDS])
def test_documented_command_parses(where, script, args, capsys):
    placeholders = [arg for arg in args if PLACEHOLDER.match(arg)]
    if placeholders:
        pytest.skip(f"{where}: {', '.join(placeholders)} is a placeholder for an argument, not a value to parse")
    parser = parser_of(script)
    try:
        parser.parse_args(args)
    except SystemExit as stop:
        if stop.code:
            pytest.fail(f"{where}: `{script} {shlex.join(args)}` does not parse: {capsys.readouterr().err.strip()}")
