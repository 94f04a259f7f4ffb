"""Per-image random augmentation applied to whole batches on the batch's own device.

Every image gets its own affine parameters (rotation, zoom, shear, translation), optionally an
elastic displacement field and a random erased rectangle, all drawn from one ``torch.Generator``
so a run is reproducible from its seed. Images are floats on the [0, 1] scale with a black (0)
background, so the zeros that ``grid_sample`` pads with and the erased pixels are background.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError

SIDE = 28


@dataclass(frozen=True)
class AugmentPolicy:
    """Ranges of the random transforms; zeros everywhere means no augmentation."""

    rotate: float = 0.0  # degrees, uniform in [-rotate, rotate]
    scale: float = 0.0  # zoom factor uniform in [1 - scale, 1 + scale]
    shear: float = 0.0  # degrees, uniform in [-shear, shear] (horizontal shear)
    translate: float = 0.0  # fraction of the side, per axis, uniform in [-t, t]
    elastic_alpha: float = 0.0  # elastic displacement magnitude in pixels (0 = off)
    elastic_sigma: float = 4.0  # Gaussian smoothing of the elastic field, pixels
    erase_p: float = 0.0  # probability that an image gets a random rectangle erased
    erase_max: float = 0.15  # largest erased area as a fraction of the image

    _LIMITS = {
        "rotate": (0.0, 180.0),
        "scale": (0.0, 0.9),
        "shear": (0.0, 60.0),
        "translate": (0.0, 0.5),
        "elastic_alpha": (0.0, 10.0),
        "elastic_sigma": (0.5, 10.0),
        "erase_p": (0.0, 1.0),
        "erase_max": (0.01, 0.5),
    }

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"augment.{f.name}: expected a number, got {value!r}")
            low, high = self._LIMITS[f.name]
            if not (low <= value <= high):
                raise ConfigError(f"augment.{f.name}: {value} is outside [{low}, {high}]")
            object.__setattr__(self, f.name, float(value))

    @classmethod
    def from_dict(cls, d: dict) -> AugmentPolicy:
        """Build from a plain dict; unknown keys and out-of-range values raise ConfigError."""
        if not isinstance(d, dict):
            raise ConfigError(f"augment: expected a dict or a preset name, got {d!r}")
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ConfigError(f"augment: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def preset(cls, name: str) -> AugmentPolicy:
        if name not in PRESETS:
            raise ConfigError(f"augment: unknown preset {name!r}; known: {sorted(PRESETS)}")
        return cls.from_dict(PRESETS[name])

    @classmethod
    def parse(cls, spec: str | dict | AugmentPolicy) -> AugmentPolicy:
        """A preset name, a dict or a policy -> a policy."""
        if isinstance(spec, AugmentPolicy):
            return spec
        return cls.preset(spec) if isinstance(spec, str) else cls.from_dict(spec)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def is_identity(self) -> bool:
        return self.rotate == self.scale == self.shear == self.translate == 0.0 and (
            self.elastic_alpha == 0.0 and self.erase_p == 0.0
        )

    @property
    def has_affine(self) -> bool:
        return any((self.rotate, self.scale, self.shear, self.translate))


PRESETS: dict[str, dict] = {
    "none": {},
    "affine": {"rotate": 10, "scale": 0.1, "shear": 5, "translate": 0.1},
    "affine_strong": {"rotate": 15, "scale": 0.15, "shear": 10, "translate": 0.12},
    "affine_elastic": {
        "rotate": 10,
        "scale": 0.1,
        "shear": 5,
        "translate": 0.1,
        # about a pixel of smooth displacement: 2 px at sigma 4 stretched strokes by ~30%
        # locally and made many digits unreadable (see 02_augmentation's gallery)
        "elastic_alpha": 1.0,
        "elastic_sigma": 5.0,
    },
    "affine_erasing": {
        "rotate": 10,
        "scale": 0.1,
        "shear": 5,
        "translate": 0.1,
        "erase_p": 0.5,
        "erase_max": 0.15,
    },
}


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
