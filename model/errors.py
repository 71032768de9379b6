"""The one error type the model/ package raises for bad input files and bad settings, and how a script ends on it.

    from model.errors import MiniMindError, run_main
    try:
        model = load_model("out/full_sft_512x8.pth")
    except MiniMindError as error:      # a plain Exception: catch it by name (or as Exception)
        print(error)                    # one line naming the file or field, e.g. "out/x.json: 'dim' must be ..."

    if __name__ == "__main__":          # every script's entry point
        run_main(main)                  # a MiniMindError: its line on stderr, exit status 1, no traceback

Library callers (the server, tests, notebooks) get the typed error and decide; only a script's entry point
turns it into the way a command-line tool ends.
"""
import sys

# Defined in model/LMConfig.py, which must stay importable on its own inside exported model folders.
from model.LMConfig import MiniMindError  # noqa: E402  (re-exported: import it from here)

__all__ = ["MiniMindError", "first_line", "run_main"]


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's text (its type when it has none), cut to `limit` characters."""
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def run_main(main, *args, **kwargs):
    """main(*args, **kwargs), for a script's `if __name__ == "__main__":`. A MiniMindError ends the process
    as a command-line tool should: its message as one line on stderr, exit status 1, no traceback. Any
    other exception is a bug and keeps its traceback. Returns what main returns."""
    try:
        return main(*args, **kwargs)
    except MiniMindError as error:
        lines = [line.strip() for line in str(error).strip().splitlines()]
        print(" ".join(line for line in lines if line) or type(error).__name__, file=sys.stderr, flush=True)
        sys.exit(1)
