"""Error kinds the CLI maps to exit codes: bad input (2) and a stage that ran and failed (1)."""


class InputError(ValueError):
    """Bad input found before work starts: params, data, model, tokenizer. The message names the problem."""


class StageFailed(RuntimeError):
    """A stage ran and failed (a data check, a training process); nothing was written downstream."""
