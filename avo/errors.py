"""Errors a user can act on: printed as one message naming the fix, without a traceback."""


class UserError(Exception):
    """A bad config, a missing seed, an unwritable directory, a broken seed program..."""
