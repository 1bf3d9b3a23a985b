"""detloss.integrations.mmdet against mmengine's real registry and config system.

mmdetection's own ``MODELS`` is used where ``mmdet.models`` imports; it needs mmcv's compiled
operators, and an mmcv with them could not be installed beside torch 2.14.1 (see docs/guides/frameworks.md), so
the builds also go through a registry made as mmdetection makes its own: a child of mmengine's
root ``MODELS`` with its own scope.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.integration.conftest import INSTALL_HINT

pytest.importorskip("mmengine", reason=f"mmengine {INSTALL_HINT}")

import torch
from mmengine.config import Config
from mmengine.registry import MODELS as ROOT
from mmengine.registry import DefaultScope, Registry

from detloss import LOSSES
from detloss.integrations import mmdet as dlm
from detloss.registry import get_spec
from detloss.testing import sample_inputs

#: A downstream registry with mmdetection's semantics (``Registry("model", parent=MMENGINE_MODELS, ...)``).
DOWNSTREAM = Registry("model", parent=ROOT, scope="detloss_downstream_test")


def _mmdet_models() -> Registry:
    try:
        import mmdet.models  # noqa: F401
        from mmdet.registry import MODELS
    except Exception as error:  # mmdet.models imports mmcv's compiled ops
        pytest.skip(f"mmdet.models does not import here ({type(error).__name__}: {error})")
    return MODELS


@pytest.fixture(params=["mmengine", "downstream", "mmdet"])
def registry(request: pytest.FixtureRequest) -> Registry:
    return {"mmengine": lambda: ROOT, "downstream": lambda: DOWNSTREAM, "mmdet": _mmdet_models}[request.param]()


def test_importing_registers_the_detloss_scope() -> None:
    assert dlm.MODELS is ROOT.children["detloss"]
    assert dlm.register() is dlm.MODELS  # idempotent
    assert sorted(dlm.MODELS.module_dict) == sorted(dlm.SHELLS)


@pytest.mark.parametrize("key", sorted(LOSSES))
def test_every_loss_builds_from_a_config_and_equals_the_direct_call(registry: Registry, key: str) -> None:
    spec = get_spec(key)
    name = spec.module.__name__
    options = dict(spec.call_options)
    loss = registry.build(dict(type=f"detloss.{name}", loss_weight=2.0, **options))
    assert type(loss) is dlm.SHELLS[name]
    inputs = sample_inputs(key, 6, dtype=torch.float64, requires_grad=False)
    loss.eval()  # Wise-IoU: this batch's mean, as the direct call
    torch.testing.assert_close(loss(*inputs, avg_factor=4.0), 2.0 * spec.function(*inputs, **options, avg_factor=4.0))
    if spec.inputs == "boxes":
        weight = torch.rand(6, 4, dtype=torch.float64)
        expected = 2.0 * spec.function(*inputs, **options, weight=weight.mean(-1), reduction="sum")
        torch.testing.assert_close(loss(*inputs, weight, reduction_override="sum"), expected)


def test_mmdet_names_stay_mmdets(registry: Registry) -> None:
    """``detloss.EIoULoss`` is detloss's EIoU; a bare ``EIoULoss`` is left to the framework."""
    assert registry.get("detloss.EIoULoss") is dlm.SHELLS["EIoULoss"]
    assert registry.get("detloss.SIoULoss").spec.key == "siou"


def test_builds_in_a_framework_default_scope() -> None:
    """Inside a runner, mmengine switches to the framework's registry first: the scope still resolves."""
    with DefaultScope.overwrite_default_scope("detloss_downstream_test"):
        loss = ROOT.build(dict(type="detloss.WIoULoss", loss_weight=2.0))
    assert type(loss) is dlm.SHELLS["WIoULoss"] and loss.loss_weight == 2.0


def test_custom_imports_in_a_config_file_register_the_losses(tmp_path: Path) -> None:
    """A fresh interpreter: only the config's custom_imports imports detloss.integrations.mmdet."""
    config = tmp_path / "retina_wiou.py"
    config.write_text(
        textwrap.dedent(
            """
            custom_imports = dict(imports=["detloss.integrations.mmdet"], allow_failed_imports=False)
            loss_bbox = dict(type="detloss.WIoULoss", loss_weight=2.0)
            loss_cls = dict(type="detloss.VarifocalLoss", alpha=0.75, gamma=2.0, loss_weight=1.0)
            """
        )
    )
    script = textwrap.dedent(
        f"""
        import sys
        from mmengine.config import Config
        from mmengine.registry import MODELS
        assert "detloss.integrations.mmdet" not in sys.modules
        cfg = Config.fromfile({str(config)!r})
        box, cls = MODELS.build(cfg.loss_bbox), MODELS.build(cfg.loss_cls)
        print(type(box).__module__, type(box).__name__, box.loss_weight, type(cls).__name__)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["detloss.integrations.mmdet", "WIoULoss", "2.0", "VarifocalLoss"]
    assert Config.fromfile(config).loss_bbox.type == "detloss.WIoULoss"


def test_state_of_a_built_loss_is_in_its_parents_state_dict() -> None:
    head = torch.nn.Module()
    head.loss_bbox = ROOT.build(dict(type="detloss.WIoULoss"))
    pred, target = sample_inputs("wiou", 8)
    head.loss_bbox(pred, target, torch.ones(8, 4), avg_factor=8.0)
    assert 0.0 < float(head.state_dict()["loss_bbox.loss.running_iou_mean"]) <= 1.0
