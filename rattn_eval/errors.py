"""Typed errors. The library raises these; only the CLI turns them into one line and an exit code."""


class RattnError(Exception):
    """Base class: a user-facing problem with a one-sentence message."""


class ConfigError(RattnError):
    """Bad option values: unknown task, bad length string, bad window, ..."""


class CheckpointError(RattnError):
    """Missing, corrupt or mismatched checkpoint."""


class BudgetError(RattnError):
    """A prompt (plus its generation budget) does not fit the model's context."""


class DataError(RattnError):
    """Missing or malformed input data (QA files, corpora)."""


class NumericsError(RattnError):
    """NaN or inf in model outputs."""


def did_you_mean(name, known) -> str:
    """" Did you mean 'x'?" for the closest of `known` to `name`, or "" when none is close."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
