"""Errors a user can act on: each message names the file, row or field and says what to do."""


class PromptOptError(Exception):
    """Base class so the CLI can print our messages as one paragraph instead of a traceback."""


class DatasetError(PromptOptError):
    pass


class MissingLabelsError(DatasetError):
    """A dataset file without the ground_truth_output column, where no model migration supplies references."""


class PromptError(PromptOptError):
    pass


class ManifestError(PromptOptError):
    pass


class ScorerError(PromptOptError):
    """A scorer that cannot be found, loaded or run as configured (names the scorer and its source)."""


class ContextWindowError(PromptOptError):
    """Rendered prompts longer than the task model reads: found before any call, with the rows named."""
