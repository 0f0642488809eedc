"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class OloraError(Exception):
    """Bad input (file, record, field, flag): the message names what is wrong and where."""


class DataError(OloraError):
    """A data file or record cannot be used."""


class ConfigError(OloraError):
    """A flag or config value is invalid."""


class ModelError(OloraError):
    """A model path or id cannot be loaded."""


class AdapterError(OloraError):
    """An adapter cannot be built, saved, loaded or composed."""
