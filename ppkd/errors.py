"""The one exception type ppkd raises for bad input.

Command-line shells print it as a single line and exit non-zero; anything
else is a bug and keeps its traceback.
"""


class PPKDError(Exception):
    """Bad input: a config, a weight file, a data set or a training run
    that cannot go on. The message names the culprit."""
    exit_code = 2


class StoppedBySignal(PPKDError):
    """Training stopped by SIGTERM (a preempted job) after saving where it was."""
    exit_code = 143
