"""Errors a user can fix. A ``UserError``'s message is one line naming the config field, file or
line to change, so a command line prints it as is (no traceback) and exits with status 2."""


class UserError(Exception):
  """A mistake the user can fix: the message is one line naming the field, file or line."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work, or a config that does not fit the workdir's run."""


class WorkdirBusy(UserError):
  """Another process holds the workdir's lock; the message names its pid and the lock file."""


class WorkdirFileError(UserError, FileNotFoundError):
  """A file a workdir should hold (config.json, a checkpoint) is missing or unreadable."""
