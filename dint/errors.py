"""The one exception type a user should see as a single line (exit code 2), never a traceback."""


class DintError(Exception):
    """Bad input or configuration: the message names the file, key or value and what is wrong."""

    exit_code = 2

    def __init__(self, message: str, shared: bool = False):
        super().__init__(message)
        self.shared = shared  # every rank raises it: rank 0 alone reports it
