"""The one exception type the CLI turns into a clean message and a non-zero exit.

Raise `CredoError` for anything a user can fix (a missing file, a malformed row, an unknown name);
the message must say what is wrong and where (file, line, field). Programming errors stay ordinary
exceptions so they keep their traceback.
"""


class CredoError(Exception):
    """A user-facing error: the CLI prints `error: <message>` and exits with status 2."""
