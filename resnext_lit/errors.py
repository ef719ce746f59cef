"""Bad input, told in one line: `UserError`.

    from resnext_lit.errors import UserError
    raise UserError(f"unknown model {name!r}; see `python -m resnext_lit models`")

`resnext_lit.cli.main` prints a `UserError` as `error: <message>` and exits with status 2,
before any heavy work. Every other exception is a bug (ours or a library's) and keeps its
traceback. It subclasses `ValueError`, so `except ValueError` still catches it.
"""


class UserError(ValueError):
    """The user's input (a flag, a config value, a file) cannot work; the message names it."""
