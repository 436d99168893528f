"""Errors meant for people: one sentence naming the input, what was expected and what was found."""


class InputError(ValueError):
    """A user-supplied input (file, model, option) is unusable. The CLI maps it to exit code 2."""


class NonFiniteError(InputError):
    """A model produced NaN or infinity: no metric computed from it would mean anything."""


def check_finite(tensor, where: str) -> None:
    """Raise ``NonFiniteError`` naming ``where`` if ``tensor`` holds NaN or infinity."""
    import torch

    if not bool(torch.isfinite(tensor).all()):
        raise NonFiniteError(f"the model's {where} are not finite (NaN or infinity); no metric is computed from them")
