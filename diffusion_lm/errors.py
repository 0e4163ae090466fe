"""The one error type that the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a config, a file, a checkpoint or a target."""
