"""One contract, every registered loss: a loss added to the registry is covered the day it lands."""

from __future__ import annotations

import inspect
import re

import pytest
import torch

from detloss import available_losses
from detloss.errors import DetLossError
from detloss.nn import function_options
from detloss.registry import get_spec
from detloss.testing import sample_inputs

LOSSES = available_losses()


def call(key: str, inputs: tuple[torch.Tensor, ...], **kw: object) -> torch.Tensor:
    spec = get_spec(key)
    return spec.function(*inputs, **{**dict(spec.call_options), **kw})


@pytest.mark.parametrize("key", LOSSES)
def test_reductions_agree(key: str) -> None:
    inputs = sample_inputs(key, 6, dtype=torch.float64)
    none = call(key, inputs, reduction="none")
    assert none.dim() >= 1 and none.shape[0] == 6
    assert torch.isfinite(none).all()
    torch.testing.assert_close(call(key, inputs, reduction="sum"), none.sum())
    torch.testing.assert_close(call(key, inputs, reduction="mean"), none.mean())
    torch.testing.assert_close(call(key, inputs, reduction="mean", avg_factor=3.0), none.sum() / 3.0)
    weight = torch.rand(none.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(call(key, inputs, reduction="sum", weight=weight), (none * weight).sum())


@pytest.mark.parametrize("key", LOSSES)
def test_no_positives_gives_the_sum(key: str) -> None:
    """``avg_factor=0`` (a batch without positives) is the sum: finite, no division by ~0."""
    inputs = sample_inputs(key, 6, dtype=torch.float64)
    loss = call(key, inputs, reduction="mean", avg_factor=0)
    torch.testing.assert_close(loss, call(key, inputs, reduction="sum"))
    loss.backward()
    assert all(torch.isfinite(t.grad).all() for t in inputs if t.requires_grad and t.grad is not None)


@pytest.mark.parametrize("key", LOSSES)
def test_empty_input_is_zero_with_gradient(key: str) -> None:
    inputs = sample_inputs(key, 0)
    for reduction in ("mean", "sum"):
        loss = call(key, inputs, reduction=reduction)
        assert loss.shape == () and loss.item() == 0.0
        grads = torch.autograd.grad(loss, [t for t in inputs if t.requires_grad], allow_unused=True)
        assert all(g is None or g.numel() == 0 for g in grads)
    loss = call(key, inputs, reduction="mean", avg_factor=0)
    assert loss.item() == 0.0


@pytest.mark.parametrize("key", LOSSES)
def test_zero_weight_gives_zero(key: str) -> None:
    inputs = sample_inputs(key, 5)
    none = call(key, inputs, reduction="none")
    loss = call(key, inputs, weight=torch.zeros_like(none.detach()))
    assert loss.item() == 0.0
    loss.backward()
    for t in inputs:
        if t.requires_grad:
            assert t.grad is not None and torch.count_nonzero(t.grad) == 0


@pytest.mark.parametrize("key", LOSSES)
def test_sum_with_avg_factor_raises(key: str) -> None:
    with pytest.raises(DetLossError, match="avg_factor"):
        call(key, sample_inputs(key, 3), reduction="sum", avg_factor=2.0)


@pytest.mark.parametrize("key", LOSSES)
def test_unknown_reduction_raises(key: str) -> None:
    with pytest.raises(DetLossError, match="reduction"):
        call(key, sample_inputs(key, 3), reduction="average")


@pytest.mark.parametrize("key", LOSSES)
def test_module_equals_function_with_same_defaults(key: str) -> None:
    spec = get_spec(key)
    fn_defaults = {p.name: p.default for p in function_options(spec.function)}
    module_params = inspect.signature(spec.module).parameters
    module_defaults = {n: p.default for n, p in module_params.items() if n != "loss_weight"}
    assert module_defaults == fn_defaults
    assert module_params["loss_weight"].default == 1.0
    inputs = sample_inputs(key, 4, dtype=torch.float64)
    required = dict(spec.call_options)  # e.g. mpdiou's image_size
    torch.testing.assert_close(spec.module(**required)(*inputs), spec.function(*inputs, **required))
    torch.testing.assert_close(spec.module(**required, loss_weight=2.5)(*inputs), 2.5 * call(key, inputs))
    with pytest.raises(DetLossError, match="no_such_option"):
        spec.module(no_such_option=1)


@pytest.mark.parametrize("key", LOSSES)
def test_module_forward_names_the_function_inputs(key: str) -> None:
    """``help()`` and ``inspect.signature`` show ``forward(pred, target, weight, avg_factor)``
    (``iou_aware``: its three inputs), and the names work as keywords."""
    spec = get_spec(key)
    inputs = [p.name for p in inspect.signature(spec.function).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert inputs[:2] == ["pred", "target"] or inputs == ["pred", "pred_boxes", "target_boxes"]
    params = list(inspect.signature(spec.module.forward).parameters)
    assert params == ["self", *inputs, "weight", "avg_factor"]
    module = spec.module(**dict(spec.call_options))
    values = sample_inputs(key, 4, dtype=torch.float64, requires_grad=False)
    expected = spec.function(*values, **dict(spec.call_options), avg_factor=2.0)
    torch.testing.assert_close(module(*values, avg_factor=2.0), expected)
    torch.testing.assert_close(module(**dict(zip(inputs, values)), avg_factor=2.0), expected)
    shape = spec.function(*values, **dict(spec.call_options), reduction="none").shape
    weight = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    positional = module(*values, weight)  # weight is the parameter after the inputs
    torch.testing.assert_close(positional, spec.function(*values, **dict(spec.call_options), weight=weight))
    with pytest.raises(TypeError):
        module(*values, no_such_input=1)


@pytest.mark.parametrize("key", LOSSES)
def test_gradcheck_float64(key: str) -> None:
    spec = get_spec(key)
    options = dict(spec.exact_options or ())
    if spec.surrogate_gradient and spec.exact_options is None:
        pytest.skip("surrogate gradient by design; checked against frozen-constant finite differences in its own tests")
    inputs = sample_inputs(key, 4, dtype=torch.float64, seed=3)
    grad_idx = [i for i, t in enumerate(inputs) if t.requires_grad]

    def f(*diff: torch.Tensor) -> torch.Tensor:
        full = list(inputs)
        for i, t in zip(grad_idx, diff):
            full[i] = t
        return call(key, tuple(full), reduction="sum", **options)

    assert torch.autograd.gradcheck(f, tuple(inputs[i] for i in grad_idx), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("key", LOSSES)
def test_half_inputs_give_finite_float32_close_to_float64(key: str, dtype: torch.dtype) -> None:
    ref_inputs = sample_inputs(key, 16, dtype=torch.float64, requires_grad=False)
    half_inputs = tuple(t.to(dtype) if t.is_floating_point() else t for t in ref_inputs)
    # compare against float64 on the same (rounded) inputs: the test is of the computation
    rounded = tuple(t.double() if t.is_floating_point() else t for t in half_inputs)
    out = call(key, half_inputs, reduction="none")
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), call(key, rounded, reduction="none"), atol=2e-4, rtol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["fused", "native", "compiled"])
@pytest.mark.parametrize("key", LOSSES)
def test_every_backend_gives_the_reference_values_and_gradients(key: str, backend: str, dtype: torch.dtype) -> None:
    """Whatever part of a loss a backend runs (the IoU kernel, the binary family, or nothing),
    the loss's values and gradients are the reference path's to float rounding."""
    import detloss

    with detloss.use_backend(backend):  # asking for native loads it (or builds it, once)
        info = detloss.backend_info()
    if backend == "native" and info.native_library is None:
        pytest.skip(f"native kernel unavailable: {info.native_failure}")
    if backend == "compiled" and dtype == torch.float64:
        pytest.skip("one dtype is enough for the compiled path (a compile per loss)")
    results = []
    try:
        for name in ("reference", backend):
            detloss.set_backend(name)
            inputs = sample_inputs(key, 64, dtype=dtype, seed=4)
            values = call(key, inputs, reduction="none")
            weight = torch.rand(values.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
            (values * weight.to(values.dtype)).sum().backward()
            results.append((values.detach(), [x.grad for x in inputs if x.requires_grad]))
    finally:
        detloss.set_backend(None)
    (ref_values, ref_grads), (values, grads) = results
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(values, ref_values, **tol)
    assert len(grads) == len(ref_grads) > 0
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref, **tol)


def documented_arguments(obj: object) -> list[str]:
    """The names an ``Args:`` section lists (``name: ...`` lines indented once under it)."""
    doc = inspect.getdoc(obj) or ""
    lines = doc.splitlines()
    if "Args:" not in lines:
        return []
    names = []
    for line in lines[lines.index("Args:") + 1 :]:
        if line and not line.startswith(" "):
            break  # the next section
        match = re.match(r"^ {4}(\w+):", line)
        if match:
            names.append(match.group(1))
    return names


def public_functions() -> list[tuple[str, object]]:
    from detloss import boxes, functional
    from detloss.boxes.iou import box_similarity
    from detloss.reduction import global_avg_factor, reduce_loss

    found = [(f"functional.{n}", getattr(functional, n)) for n in functional.__all__]
    found += [(f"boxes.{n}", getattr(boxes, n)) for n in boxes.__all__ if callable(getattr(boxes, n))]
    found += [("boxes.BoxCoder.encode", boxes.BoxCoder.encode), ("boxes.BoxCoder.decode", boxes.BoxCoder.decode)]
    found += [("box_similarity", box_similarity), ("reduce_loss", reduce_loss)]
    return [*found, ("global_avg_factor", global_avg_factor)]


@pytest.mark.parametrize(("name", "obj"), public_functions(), ids=[n for n, _ in public_functions()])
def test_docstrings_document_every_parameter(name: str, obj: object) -> None:
    """kornia's style: an ``Args:`` entry per parameter, in order, and ``Shape:`` for the losses."""
    target = obj.__init__ if inspect.isclass(obj) else obj  # type: ignore[misc]
    params = [p for p in inspect.signature(target).parameters if p != "self"]
    assert documented_arguments(obj) == params
    if name.startswith("functional.") and name.endswith("_loss"):
        assert "Shape:" in (inspect.getdoc(obj) or "").splitlines()
