"""The one exception type ppkd raises for bad input.

Command-line shells print it as a single line and exit non-zero; anything
else is a bug and keeps its traceback.
"""


class PPKDError(Exception):
    """Bad input: a config, a weight file, a data set or a training run
    that cannot go on. The message names the culprit."""
    exit_code = 2


def describe(error):
    """`error` as one line: its type and the last line of its message (a
    wrapped error's message ends with the cause)."""
    message = str(error).strip()
    return f'{type(error).__name__}: {message.splitlines()[-1] if message else ""}'


class StoppedBySignal(PPKDError):
    """Training stopped by SIGTERM (a preempted job) after saving where it was."""
    exit_code = 143
