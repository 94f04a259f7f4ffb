"""What augmentation to apply: the per-image random transforms' ranges (AugmentPolicy), the named
presets, and the test-time shifts. Plain settings with no torch, so configs and the stage graph
can be read without loading it; :mod:`augment` applies them to batches."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from digit_utils import typed
from digit_utils.errors import ConfigError

# (dy, dx) pixel shifts for test-time augmentation, identity first; tta=k uses the first k + 1.
# Never flips: a mirrored 2 or 7 is not a digit.
SHIFTS: tuple[tuple[int, int], ...] = (
    (0, 0),
    (0, 1),
    (0, -1),
    (1, 0),
    (-1, 0),
    (1, 1),
    (-1, -1),
    (1, -1),
    (-1, 1),
)
MAX_TTA = len(SHIFTS) - 1


def tta_shifts(tta: int) -> tuple[tuple[int, int], ...]:
    """The shifts ``tta=k`` averages over (identity first); the one check of a TTA value."""
    if isinstance(tta, bool) or not isinstance(tta, int) or not 0 <= tta <= MAX_TTA:
        raise ConfigError(f"tta: {tta!r} must be an integer in [0, {MAX_TTA}]")
    return SHIFTS[: tta + 1]


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
        typed.check_dataclass(self, where="augment.")
        for f in fields(self):
            value, (low, high) = getattr(self, f.name), self._LIMITS[f.name]
            if not (low <= value <= high):
                raise ConfigError(f"augment.{f.name}: {value} is outside [{low}, {high}]")

    @classmethod
    def from_dict(cls, d: dict) -> AugmentPolicy:
        """Build from a plain dict; unknown keys and out-of-range values raise ConfigError."""
        return typed.from_dict(cls, d, where="augment: ")

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
