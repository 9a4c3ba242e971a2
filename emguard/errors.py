"""Errors that name the place of the bad input (file, line, column or config key)."""


class EmguardError(Exception):
    """Base class for every error emguard raises on purpose."""


class InputError(EmguardError, ValueError):
    """Bad input data. The message names the file and, where known, the line or column."""


class ConfigError(EmguardError, ValueError):
    """Bad configuration. The message names the config key (dotted path)."""
