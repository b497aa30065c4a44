"""The one exception type for bad user input.

Anything raised as ``UserError`` reaches the user as a single line and exit code 2 (see
``run.py``); everything else is a bug and keeps its traceback.
"""

import re


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix, on one line.

    Line breaks are folded into spaces here, so a message that quotes a multi-line library error
    (a TOML parser, PIL, tarfile) still prints as the one line promised above.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(re.sub(r"\s*[\r\n]+\s*", " ", str(message)).strip(), *args)


class TrainingFailed(Exception):
    """Training that cannot produce a usable result, e.g. non-finite loss in the original model:
    printed as one line with exit code 1 by ``run.py`` (not the user's input, so not exit 2)."""
