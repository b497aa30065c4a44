"""The one exception type for bad user input.

Anything raised as ``UserError`` reaches the user as a single line and exit code 2 (see
``run.py``); everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix, on one line."""
