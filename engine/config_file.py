"""`--config FILE` for the training scripts: a JSON or YAML file whose keys are the script's flags.

    args = parse_with_config(parser, argv)      # instead of parser.parse_args(argv)

    python 1-pretrain.py --config runs/tiny.yaml --max_steps 50

The file's values become the parser's defaults, so a flag given on the command line still wins. Keys
are flag names without the dashes (`learning_rate`, `preset`, `dim`, `data`); a key the script does not
know stops the run with one line naming the key and the file. A run's `out/{name}_args.json` (the
engine's TrainConfig, written when the run starts) is such a file: `--config out/pretrain_512x8_args.json`
repeats that run's training settings. YAML is read when the name ends in .yaml or .yml, JSON otherwise.

Values are checked as the flag would check them: `"batch_size": 8` or `"batch_size": "8"`, not 8.5; a
flag with choices takes one of them; a flag that takes several values (`data`) takes a list; an on/off
flag (`pack`, `lora`) takes true or false; null leaves the flag unset, as its default None does.
"""
import argparse
import difflib
import reprlib
from pathlib import Path

from model.errors import MiniMindError, first_line
from model.jsonfile import read_json_object

_OWN = ("help", "config")  # destinations that a config file cannot set


def read_config_file(path) -> dict:
    """The file's top-level mapping, or a MiniMindError naming the file."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise MiniMindError(f"--config {path}: cannot read it ({getattr(error, 'strerror', None) or first_line(error)})")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise MiniMindError(f"--config {path}: not valid YAML ({first_line(error, 200)})") from None
        if not isinstance(value, dict):
            raise MiniMindError(f"--config {path}: expected a mapping of flag names to values, "
                                f"found {type(value).__name__}")
        for key in value:
            if not isinstance(key, str):
                raise MiniMindError(f"--config {path}: key {key!r} is not a flag name")
        return value
    try:
        return read_json_object(path)
    except MiniMindError as error:
        raise MiniMindError(f"--config {error}") from None


def _flag_actions(parser: argparse.ArgumentParser) -> dict:
    return {action.dest: action for action in parser._actions if action.option_strings and action.dest not in _OWN}


def _convert_one(action, key: str, value, source: str):
    where = f"--config {source}: '{key}'"
    if isinstance(value, (list, dict)):
        raise MiniMindError(f"{where} takes one value, found {reprlib.repr(value)}")
    if action.type is None:
        if not isinstance(value, str):
            raise MiniMindError(f"{where} must be a string, found {reprlib.repr(value)}")
        converted = value
    else:
        # Written the way it would be typed: true -> "True" (a bool flag reads it), 8.5 -> "8.5" (an int flag refuses it).
        try:
            converted = action.type(value if isinstance(value, str) else str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
            raise MiniMindError(f"{where}: {reprlib.repr(value)} is not a valid "
                                f"{getattr(action.type, '__name__', 'value').lstrip('_')} ({first_line(error, 120)})") from None
    if action.choices is not None and converted not in action.choices:
        raise MiniMindError(f"{where} must be one of {', '.join(map(str, action.choices))}, found {reprlib.repr(value)}")
    return converted


def config_value(action, key: str, value, source: str):
    """`value` from the file as the flag would have parsed it, or a MiniMindError naming file and key."""
    if value is None:
        return None
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise MiniMindError(f"--config {source}: '{key}' is an on/off flag: true or false, found {reprlib.repr(value)}")
        return value
    if action.nargs in ("+", "*"):
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or (action.nargs == "+" and not values):
            raise MiniMindError(f"--config {source}: '{key}' takes a list of values, found {reprlib.repr(value)}")
        return [_convert_one(action, key, item, source) for item in values]
    return _convert_one(action, key, value, source)


def apply_config_file(parser: argparse.ArgumentParser, path) -> dict:
    """Read `path` and set its values as the parser's defaults; returns them as set."""
    fields = read_config_file(path)
    actions = _flag_actions(parser)
    defaults = {}
    for key, value in fields.items():
        if key not in actions:
            close = difflib.get_close_matches(key, list(actions), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise MiniMindError(f"--config {path}: unknown key '{key}': {parser.prog} has no --{key} flag{hint}")
        defaults[key] = config_value(actions[key], key, value, str(path))
    parser.set_defaults(**defaults)
    return defaults


def add_config_file_arg(parser: argparse.ArgumentParser) -> None:
    if "--config" not in parser._option_string_actions:
        parser.add_argument("--config", metavar="FILE", default=None,
                            help="JSON or YAML (.yaml/.yml) file of flag values, e.g. a run's out/{name}_args.json; "
                                 "flags on the command line win over it")


def parse_with_config(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """parser.parse_args(argv), with the values of `--config FILE` (when given) as the defaults."""
    add_config_file_arg(parser)
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config", default=None)
    known, _ = first.parse_known_args(argv)
    if known.config:
        apply_config_file(parser, known.config)  # a MiniMindError (one line, exit status 1) when the file is wrong
    return parser.parse_args(argv)
