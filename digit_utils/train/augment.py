"""Per-image random augmentation applied to whole batches on the batch's own device.

Every image gets its own affine parameters (rotation, zoom, shear, translation), optionally an
elastic displacement field and a random erased rectangle, all drawn from one ``torch.Generator``
so a run is reproducible from its seed. Images are floats on the [0, 1] scale with a black (0)
background, so the zeros that ``grid_sample`` pads with and the erased pixels are background.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from digit_utils.augment_policy import AugmentPolicy
from digit_utils.errors import ConfigError

SIDE = 28


def _uniform(n: int, k: int, generator, device) -> torch.Tensor:
    """(n, k) uniform in [-1, 1)."""
    return torch.rand(n, k, generator=generator, device=device) * 2 - 1


def _affine_theta(policy: AugmentPolicy, u: torch.Tensor) -> torch.Tensor:
    """Per-image (B,2,3) matrices mapping output to input coordinates, from u (B,5) in [-1,1)."""
    angle = torch.deg2rad(u[:, 0] * policy.rotate)
    zoom = 1 + u[:, 1] * policy.scale
    shear = torch.tan(torch.deg2rad(u[:, 2] * policy.shear))
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(len(u), 2, 3, device=u.device)
    # rotation·shear, divided by the zoom because the grid maps output pixels back to input ones
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = cos * shear - sin
    theta[:, 1, 0] = sin
    theta[:, 1, 1] = sin * shear + cos
    theta[:, :, 2] = u[:, 3:5] * (2 * policy.translate)  # normalised coords span 2 per side
    return theta


def _gaussian_blur(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B,C,H,W) with zero padding."""
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=field.device, dtype=field.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = field.shape[1]
    field = F.conv2d(field, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, radius), groups=c)
    return F.conv2d(field, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(radius, 0), groups=c)


def _erase(x: torch.Tensor, policy: AugmentPolicy, generator) -> torch.Tensor:
    """Zero one random rectangle in a random subset (probability erase_p) of the images."""
    b, _, h, w = x.shape
    u = torch.rand(b, 5, generator=generator, device=x.device)
    area = (0.02 + u[:, 0] * (policy.erase_max - 0.02)) * h * w
    aspect = torch.exp((u[:, 1] * 2 - 1) * math.log(3.0))  # height/width in [1/3, 3]
    eh = (area * aspect).sqrt().clamp(max=h)
    ew = (area / aspect).sqrt().clamp(max=w)
    cy, cx = u[:, 2] * h, u[:, 3] * w
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w) + 0.5
    inside = ((ys - cy.view(-1, 1, 1)).abs() < eh.view(-1, 1, 1) / 2) & (
        (xs - cx.view(-1, 1, 1)).abs() < ew.view(-1, 1, 1) / 2
    )  # (B,H,W)
    inside &= (u[:, 4] < policy.erase_p).view(-1, 1, 1)
    return x.masked_fill(inside.unsqueeze(1), 0.0)


def augment_batch(
    x: torch.Tensor, policy: AugmentPolicy, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Augment float images (B,1,28,28) on the [0,1] scale; parameters are drawn per image.

    Random numbers come from ``generator`` (which must live on ``x.device``) or torch's global
    RNG. The input is not modified; an identity policy returns it unchanged.
    """
    if policy.is_identity or len(x) == 0:
        return x
    if not x.is_floating_point() or x.dim() != 4:
        raise ConfigError(
            f"augment_batch: expected float (B,C,H,W), got {x.dtype} {tuple(x.shape)}"
        )
    b, c, h, w = x.shape
    if policy.has_affine or policy.elastic_alpha:
        u = _uniform(b, 5, generator, x.device)
        theta = _affine_theta(policy, u)
        grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)  # (B,H,W,2)
        if policy.elastic_alpha:
            noise = _uniform(b, 2 * h * w, generator, x.device).view(b, 2, h, w)
            field = _gaussian_blur(noise, policy.elastic_sigma)
            # scale so that a typical displacement is about alpha pixels, in normalised units
            field = field / field.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
            grid = grid + field.permute(0, 2, 3, 1) * (policy.elastic_alpha * 2 / w)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if policy.erase_p:
        x = _erase(x, policy, generator)
    return x


def augmentation_gallery(
    images_uint8: np.ndarray | torch.Tensor,
    policy: AugmentPolicy | str | dict,
    n_draws: int = 8,
    seed: int = 0,
) -> np.ndarray:
    """The same digits under random draws: uint8 ``[n_images, n_draws, 28, 28]``.

    Column 0 is the original digit, columns 1… are independent draws of the policy.
    """
    policy = AugmentPolicy.parse(policy)
    x = torch.as_tensor(np.asarray(images_uint8)).reshape(-1, 1, SIDE, SIDE)
    n = len(x)
    batch = x.repeat_interleave(n_draws, dim=0).float() / 255  # (n*n_draws,1,28,28)
    g = torch.Generator().manual_seed(seed)
    out = augment_batch(batch, policy, g)
    out = (out * 255).round().clamp(0, 255).to(torch.uint8).view(n, n_draws, SIDE, SIDE)
    out[:, 0] = x[:, 0]  # the original, for comparison
    return out.numpy()
