"""The errors a user can cause, in one place that every layer may import (it imports nothing
of the package). Each message says what was wrong and what to do; the command line reports
any of them in one line and exits with status 2."""
from __future__ import annotations


class UserError(Exception):
    """Bad input, not a bug: the message names the value, file or folder and what to do."""


class ConfigError(UserError, ValueError):
    """A config value that cannot be used; the message names the field."""


class TaskError(UserError, ValueError):
    """A task string that no environment of the given shape can pose."""


class DataError(UserError, RuntimeError):
    """A dataset folder that is missing, incomplete or from another version."""


class RunDirError(UserError, RuntimeError):
    """An output folder that cannot be used for this run; the message says what to do."""


class StorageError(UserError, RuntimeError):
    """A file that cannot be written or read back as written; the message says what to do."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint or model that is missing or unreadable; the message says what to do."""


class TrainingDiverged(CheckpointError):
    """The weights became NaN or infinite; the message names the learning rate to lower."""


class PretrainedError(UserError, RuntimeError):
    """A shipped model that is unknown, incomplete or corrupt; the message says what to do."""


#: what ``internalrl`` (and ``python -m internalrl.experts.ant``) report as a one-line error with exit status 2
USER_ERRORS = (UserError,)
