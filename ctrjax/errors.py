"""Errors the command line reports as one line instead of a traceback."""


class UserError(Exception):
  """a mistake the user can fix: the message is one line naming the field, file or line"""
