"""Errors a user causes and can fix, which the command line reports as one clean message.

Raising a `UserError` says that its message is the whole story: a wrong config value, an
unknown name, missing data or weights, a workdir that belongs to another config or another
process. `python -m ripu_jax.main` prints such an error as one line without a traceback
(`--verbosity=1` or RIPU_JAX_TRACEBACK=1 shows it). Each class also derives from the
built-in exception a caller would expect (ValueError, FileNotFoundError, ...), so code that
catches those keeps working. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
  """The input is wrong and the message says how to fix it."""


class ConfigError(UserError, ValueError):
  """A config value that cannot run (the message names the field)."""


class UnknownNameError(UserError, ValueError):
  """A name (strategy, model, objective, ...) that no registry holds."""


class PluginError(UserError, ImportError):
  """A module named in config.plugins that cannot be imported."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or folder the config points to does not exist."""


class MissingWeightsError(MissingFileError, ValueError):
  """A pretrained weights file that does not exist (the message says how to convert it)."""


class WorkdirError(UserError, RuntimeError):
  """The workdir cannot host this run (in use, another config, no path)."""


class NonFiniteError(UserError, FloatingPointError):
  """Training produced NaN or inf; the message names the last good checkpoint."""


class DamagedCheckpointError(UserError, RuntimeError):
  """A checkpoint's files do not match its checksums (or cannot be read)."""


class StateMismatchError(UserError, ValueError):
  """A checkpoint whose networks do not fit the ones the config builds."""
