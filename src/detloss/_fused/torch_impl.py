"""The pure-torch fused path: the analytic gradients, written as elementwise tensor code.

No compiler needed. In eager mode every line is one kernel launch; under ``torch.compile``
(the "compiled" backend) inductor fuses them into one loop (Triton on GPU). The math is the
same as ``kernels.cpp``, term for term, and as the reference path's autograd, including the
subgradients it takes at kinks: ``clamp(min=0)`` passes the gradient at 0, ``minimum`` and
``maximum`` split it in half on ties, ``abs`` has gradient 0 at 0.
"""

from __future__ import annotations

import torch

from detloss.boxes.iou import FOUR_OVER_PI2, box_similarity, ciou_gate, extent

__all__ = ["binary_backward", "binary_forward", "iou_backward", "iou_forward"]

Tensor = torch.Tensor


def iou_forward(p: Tensor, t: Tensor, kind: str, eps: float, gate: bool, theta: float) -> tuple[Tensor, Tensor]:
    """``(1 - similarity, iou)``: the reference kernel itself (the value has one definition)."""
    similarity, iou = box_similarity(p, t, kind, eps, alpha_gate=gate, siou_theta=theta)
    return 1.0 - similarity, iou


def _pass(v: Tensor) -> Tensor:
    """Gradient of ``clamp(min=0)``: 1 where ``v >= 0``."""
    return (v >= 0).to(v.dtype)


def _first_of_min(a: Tensor, b: Tensor) -> Tensor:
    """d min(a, b) / da: 1, 1/2 on a tie, else 0."""
    return torch.where(a < b, 1.0, torch.where(a == b, 0.5, 0.0)).to(a.dtype)


def _first_of_max(a: Tensor, b: Tensor) -> Tensor:
    """d max(a, b) / da: 1, 1/2 on a tie, else 0."""
    return torch.where(a > b, 1.0, torch.where(a == b, 0.5, 0.0)).to(a.dtype)


def iou_backward(
    p: Tensor,
    t: Tensor,
    grad_loss: Tensor | None,
    grad_iou: Tensor | None,
    kind: str,
    eps: float,
    gate: bool,
    paper: bool,
    theta: float,
) -> tuple[Tensor, Tensor]:
    """Gradients of ``sum(grad_loss * (1 - S) + grad_iou * IoU)`` w.r.t. ``p`` and ``t``."""
    zero = p.new_zeros(())
    g_s = -grad_loss if grad_loss is not None else zero
    g_iou = (grad_iou if grad_iou is not None else zero) + g_s  # S = IoU - penalty(alpha constant)
    px1, py1, px2, py2 = p.unbind(-1)
    tx1, ty1, tx2, ty2 = t.unbind(-1)
    pwr, phr, twr, thr = px2 - px1, py2 - py1, tx2 - tx1, ty2 - ty1
    pw, ph, tw, th = pwr.clamp(min=0), phr.clamp(min=0), twr.clamp(min=0), thr.clamp(min=0)
    iwr = torch.minimum(px2, tx2) - torch.maximum(px1, tx1)
    ihr = torch.minimum(py2, ty2) - torch.maximum(py1, ty1)
    iw, ih = iwr.clamp(min=0), ihr.clamp(min=0)
    inter = iw * ih
    union_area = pw * ph + tw * th - inter
    union = union_area + eps
    iou = inter / union
    g_union = zero
    g_inter = zero
    g_pw = g_ph = g_tw = g_th = g_cw = g_ch = g_dx = g_dy = zero
    cw = ch = zero
    if kind != "iou":  # enclosing box over each box's extent (an inverted side's corners sorted)
        (pl, pr), (tl, tr) = extent(px1, px2), extent(tx1, tx2)
        (pt, pb), (tt, tb) = extent(py1, py2), extent(ty1, ty2)
        cw = torch.maximum(pr, tr) - torch.minimum(pl, tl)
        ch = torch.maximum(pb, tb) - torch.minimum(pt, tt)
    if kind in ("diou", "ciou", "eiou", "siou"):
        dx = 0.5 * ((tx1 + tx2) - (px1 + px2))
        dy = 0.5 * ((ty1 + ty2) - (py1 + py2))
        rho2 = dx * dx + dy * dy
    if kind == "giou":
        enclosing = cw * ch + eps
        g_union = g_s / enclosing
        g_enc = -g_s * union / (enclosing * enclosing)
        g_cw = g_enc * ch
        g_ch = g_enc * cw
    elif kind in ("diou", "ciou", "eiou"):
        diag = cw * cw + ch * ch + eps
        g_rho2 = -g_s / diag
        g_diag = g_s * rho2 / (diag * diag)
        g_cw = 2.0 * g_diag * cw
        g_ch = 2.0 * g_diag * ch
        g_dx = 2.0 * g_rho2 * dx
        g_dy = 2.0 * g_rho2 * dy
        if kind == "eiou":
            aw, ah = pw - tw, ph - th
            big_w, big_h = cw * cw + eps, ch * ch + eps
            g_aw = -g_s * 2.0 * aw / big_w
            g_ah = -g_s * 2.0 * ah / big_h
            g_pw, g_tw, g_ph, g_th = g_aw, -g_aw, g_ah, -g_ah
            g_cw = g_cw + 2.0 * (g_s * aw * aw / (big_w * big_w)) * cw
            g_ch = g_ch + 2.0 * (g_s * ah * ah / (big_h * big_h)) * ch
        elif kind == "ciou":
            yp, xp, yt, xt = pw + eps, ph + eps, tw + eps, th + eps
            d_angle = torch.atan2(yt, xt) - torch.atan2(yp, xp)
            v = FOUR_OVER_PI2 * d_angle**2
            alpha = v / (1 - iou + v + eps)
            if gate:
                alpha = torch.where(ciou_gate(inter, union_area), alpha, torch.zeros_like(alpha))
            g_v = -g_s * alpha
            if paper:
                g_v = g_v * (pw * pw + ph * ph)
            g_d = g_v * (2.0 * FOUR_OVER_PI2) * d_angle
            rp, rt = xp * xp + yp * yp, xt * xt + yt * yt
            g_pw, g_ph = -g_d * xp / rp, g_d * yp / rp
            g_tw, g_th = g_d * xt / rt, -g_d * yt / rt
    elif kind == "siou":
        big_r = rho2 + eps
        m = dx * dy
        angle = 2.0 * m.abs() / big_r
        gamma = 2.0 - angle
        cwe, che = cw + eps, ch + eps
        rx, ry = dx / cwe, dy / che
        ex, ey = torch.exp(-gamma * rx**2), torch.exp(-gamma * ry**2)
        g_d = -0.5 * g_s
        g_gamma = g_d * (ex * rx**2 + ey * ry**2)
        g_rx = g_d * ex * gamma * 2.0 * rx
        g_ry = g_d * ey * gamma * 2.0 * ry
        g_angle = -g_gamma
        g_m = g_angle * 2.0 * torch.sign(m) / big_r
        g_rho2 = -g_angle * angle / big_r
        g_dx = g_rx / cwe + g_m * dy + 2.0 * g_rho2 * dx
        g_dy = g_ry / che + g_m * dx + 2.0 * g_rho2 * dy
        g_cw = -g_rx * rx / cwe
        g_ch = -g_ry * ry / che
        aw, ah = pw - tw, ph - th
        big_mw = torch.maximum(pw, tw) + eps
        big_mh = torch.maximum(ph, th) + eps
        ow, oh = aw.abs() / big_mw, ah.abs() / big_mh
        sw, sh = 1 - torch.exp(-ow), 1 - torch.exp(-oh)
        g_ow = g_d * theta * sw ** (theta - 1) * (1 - sw)
        g_oh = g_d * theta * sh ** (theta - 1) * (1 - sh)
        g_aw, g_ah = g_ow * torch.sign(aw) / big_mw, g_oh * torch.sign(ah) / big_mh
        g_mw, g_mh = -g_ow * ow / big_mw, -g_oh * oh / big_mh
        kw, kh = _first_of_max(pw, tw), _first_of_max(ph, th)
        g_pw, g_tw = g_aw + g_mw * kw, -g_aw + g_mw * (1 - kw)
        g_ph, g_th = g_ah + g_mh * kh, -g_ah + g_mh * (1 - kh)
    g_inter = g_inter + g_iou / union
    g_union = g_union - g_iou * iou / union
    g_pw = g_pw + g_union * ph
    g_ph = g_ph + g_union * pw
    g_tw = g_tw + g_union * th
    g_th = g_th + g_union * tw
    g_inter = g_inter - g_union
    g_iwr, g_ihr = g_inter * ih * _pass(iwr), g_inter * iw * _pass(ihr)
    g_pwr, g_phr, g_twr, g_thr = g_pw * _pass(pwr), g_ph * _pass(phr), g_tw * _pass(twr), g_th * _pass(thr)
    hx, hy = 0.5 * g_dx, 0.5 * g_dy
    a1, a2 = _first_of_max(px1, tx1), _first_of_min(px2, tx2)
    b1, b2 = _first_of_max(py1, ty1), _first_of_min(py2, ty2)
    dp0 = -g_iwr * a1 - hx - g_pwr
    dp1 = -g_ihr * b1 - hy - g_phr
    dp2 = g_iwr * a2 - hx + g_pwr
    dp3 = g_ihr * b2 - hy + g_phr
    dt0 = -g_iwr * (1 - a1) + hx - g_twr
    dt1 = -g_ihr * (1 - b1) + hy - g_thr
    dt2 = g_iwr * (1 - a2) + hx + g_twr
    dt3 = g_ihr * (1 - b2) + hy + g_thr
    if kind != "iou":  # each end of the enclosing box routed back to the corner it came from
        cr, cl = _first_of_max(pr, tr), _first_of_min(pl, tl)
        cb, ct = _first_of_max(pb, tb), _first_of_min(pt, tt)
        g_pr, g_tr, g_pl, g_tl = g_cw * cr, g_cw * (1 - cr), -g_cw * cl, -g_cw * (1 - cl)
        g_pb, g_tb, g_pt, g_tt = g_ch * cb, g_ch * (1 - cb), -g_ch * ct, -g_ch * (1 - ct)
        vpx, vpy, vtx, vty = px2 >= px1, py2 >= py1, tx2 >= tx1, ty2 >= ty1
        dp0 = dp0 + torch.where(vpx, g_pl, g_pr)
        dp2 = dp2 + torch.where(vpx, g_pr, g_pl)
        dp1 = dp1 + torch.where(vpy, g_pt, g_pb)
        dp3 = dp3 + torch.where(vpy, g_pb, g_pt)
        dt0 = dt0 + torch.where(vtx, g_tl, g_tr)
        dt2 = dt2 + torch.where(vtx, g_tr, g_tl)
        dt1 = dt1 + torch.where(vty, g_tt, g_tb)
        dt3 = dt3 + torch.where(vty, g_tb, g_tt)
    shape = p.shape
    dp = torch.stack((dp0, dp1, dp2, dp3), dim=-1).expand(shape)
    dt = torch.stack((dt0, dt1, dt2, dt3), dim=-1).expand(shape)
    return dp, dt


# ---------------------------------------------------------------- binary classification family


def _bce_terms(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(p, 1 - p, BCE-with-logits(x, y))``, each without cancellation, for any logit."""
    u = torch.exp(-x.abs())
    r = 1.0 / (1.0 + u)
    positive = x >= 0
    p = torch.where(positive, r, u * r)
    q = torch.where(positive, u * r, r)
    ce = x.clamp(min=0) - x * y + torch.log1p(u)
    return p, q, ce


def _weight(
    y: Tensor, p: Tensor, q: Tensor, kind: str, alpha: float | None, gamma: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The factor ``w`` multiplying BCE, and its partials ``dw/dp``, ``dw/dy`` (exponent 0 or >= 1)."""
    zero = torch.zeros_like(p)
    if kind == "bce":
        return torch.ones_like(p), zero, zero
    if kind in ("focal", "quality"):
        if kind == "focal":
            m, m_p, m_y = y * q + (1 - y) * p, 1 - 2 * y, 1 - 2 * p  # m = 1 - p_t
        else:
            d = y * q - (1 - y) * p  # y - p
            m, m_p, m_y = d.abs(), -torch.sign(d), torch.sign(d)
        if gamma == 0:
            w, w_m = torch.ones_like(p), zero
        else:
            w, w_m = m**gamma, gamma * m ** (gamma - 1)
        w_p, w_y = w_m * m_p, w_m * m_y
        if kind == "focal" and alpha is not None:
            a_t = alpha * y + (1 - alpha) * (1 - y)
            w_p, w_y = a_t * w_p, a_t * w_y + (2 * alpha - 1) * w
            w = a_t * w
        return w, w_p, w_y
    if kind == "varifocal":
        a = 0.75 if alpha is None else alpha
        positive = y > 0
        pg, dpg = (torch.ones_like(p), zero) if gamma == 0 else (p**gamma, gamma * p ** (gamma - 1))
        w = torch.where(positive, y, a * pg)
        return w, torch.where(positive, zero, a * dpg), positive.to(p.dtype)
    raise ValueError(kind)


def binary_forward(x: Tensor, y: Tensor, kind: str, alpha: float | None, gamma: float) -> Tensor:
    p, q, ce = _bce_terms(x, y)
    w, _, _ = _weight(y, p, q, kind, alpha, gamma)
    return ce * w


def binary_backward(
    x: Tensor, y: Tensor, grad: Tensor, kind: str, alpha: float | None, gamma: float
) -> tuple[Tensor, Tensor]:
    p, q, ce = _bce_terms(x, y)
    w, w_p, w_y = _weight(y, p, q, kind, alpha, gamma)
    # dce/dx = p - y, written (1 - y) p - y q: for y = 1 it is -q = -sigmoid(-x) exactly, where
    # p - 1 rounds to 0 (logit 40 in float64: -4.25e-18, not 0)
    gx = grad * (((1 - y) * p - y * q) * w + ce * w_p * (p * q))
    gy = grad * (-x * w + ce * w_y)
    return gx, gy
