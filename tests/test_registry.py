from __future__ import annotations

import pytest
import torch

import detloss
from detloss.errors import DetLossError


def test_build_by_name_and_by_config() -> None:
    by_name = detloss.build_loss("giou", reduction="sum")
    by_config = detloss.build_loss({"type": "GIoULoss", "reduction": "sum"})
    assert type(by_name) is type(by_config) is detloss.GIoULoss
    assert by_name.options["reduction"] == "sum"


def test_every_key_builds_and_is_exported() -> None:
    for key in detloss.available_losses():
        module = detloss.build_loss(key, **dict(getattr(detloss.LOSSES[key], "call_options", ())))
        assert isinstance(module, torch.nn.Module)
        assert getattr(detloss, type(module).__name__) is type(module)
        assert getattr(detloss.functional, detloss.LOSSES[key].function.__name__) is detloss.LOSSES[key].function


def test_unknown_names_are_errors() -> None:
    with pytest.raises(DetLossError, match="`name`"):
        detloss.build_loss("nope")
    with pytest.raises(DetLossError, match="`config`"):
        detloss.build_loss({"reduction": "sum"})
    with pytest.raises(DetLossError, match="`reduction_override`"):
        detloss.build_loss("ciou", reduction_override="sum")


def test_public_names() -> None:
    for name in detloss.__all__:
        assert hasattr(detloss, name), name
