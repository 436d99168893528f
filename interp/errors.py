"""Errors meant for people: one sentence naming the input, what was expected and what was found."""


class InputError(ValueError):
    """A user-supplied input (file, model, option) is unusable. The CLI maps it to exit code 2."""
