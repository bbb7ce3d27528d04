"""Errors a user can cause: the CLI prints their message in one line and exits 2, without a traceback."""


class SeflError(Exception):
    """Base of every error whose message tells the user what to change."""


class ConfigError(SeflError):
    """A config file is missing, malformed, or holds an unknown key or a wrong type."""


class MissingSecretError(SeflError):
    """An API key's environment variable named in the config is not set."""


class ModelNotFoundError(SeflError):
    """A model name or folder does not resolve to anything loadable offline."""


class InputNotFoundError(SeflError):
    """An input file or folder a stage needs does not exist."""
