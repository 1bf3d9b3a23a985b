"""The one exception type of detloss."""

from __future__ import annotations

__all__ = ["DetLossError"]


class DetLossError(ValueError):
    """Bad input to a detloss function: a wrong shape, dtype, name or hyper-parameter.

    It is a :class:`ValueError`, so ``except ValueError`` catches it. The message names the
    function, the argument, what was expected and what came, e.g.::

        ciou_loss(): argument `pred` expected last dimension 4, got shape (8, 5)
    """

    @classmethod
    def bad_argument(cls, where: str, name: str, expected: str, got: object) -> DetLossError:
        """Build the standard message: ``where(): argument `name` expected ..., got ...``."""
        return cls(f"{where}(): argument `{name}` expected {expected}, got {got}")
