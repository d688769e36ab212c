"""The project's error types. Each is a mistake the user can fix, and its message names the input
and the fix; `UserError` is their common base, so that a launch script can print the message alone
(`cli.run`) while an unexpected exception (a bug) keeps its traceback."""

from __future__ import annotations


class UserError(Exception):
  """An error whose message says what is wrong and what to do about it."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work; the message names the field and the allowed values."""


class TrainingError(UserError, RuntimeError):
  """A run that cannot go on (a NaN loss, say); the message says where, what is kept and what to
  do."""


class Interrupted(UserError):
  """Ctrl-C during a long run; the message says where it stopped and that rerunning resumes."""


def require(ok: bool, field: str, value, allowed: str) -> None:
  """Raises ConfigError "config.FIELD = VALUE is not allowed: ALLOWED." unless `ok`."""
  if not ok:
    raise ConfigError(f"config.{field} = {value!r} is not allowed: {allowed}.")
