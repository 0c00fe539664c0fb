"""One dataclass holds every architectural choice of VeloxSeg (spec §1), with the paper's presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import List, Tuple

Triple = Tuple[int, int, int]


@dataclass(frozen=True)
class WindowPair:
    """One PWA window pair: a big window max-pooled by `small` to the stage's token grid `tokens`."""

    big: Triple
    small: Triple

    @property
    def tokens(self) -> Triple:
        return tuple(b // s for b, s in zip(self.big, self.small))


@dataclass
class VeloxSegConfig:
    """Architecture hyper-parameters. Lists with four entries are per encoder stage (1..4)."""

    input_size: Triple = (96, 96, 96)  # (D, H, W) of one patch; fixes window lists and Q/K/V widths
    modalities: int = 2  # CT, PET: one channel each
    n_classes: int = 2
    n_organs: int = 0  # classes of the anatomy head on the finest decoder stage (0: none, as in the paper)
    patch_size: int = 4
    base_channels: int = 16  # doubles per stage: 16, 32, 64, 128 (both branches)
    kernel_sizes: Triple = (1, 3, 5)  # parallel grouped convolutions of a JLC block
    min_dim_group: List[int] = field(default_factory=lambda: [4, 8, 8, 16])  # channels per group
    expansion: List[int] = field(default_factory=lambda: [3, 3, 2, 2])  # JLC MLP and transformer FFN
    min_big_windows: List[Triple] = field(default_factory=lambda: [(3, 3, 3), (6, 6, 6), (3, 3, 3), (3, 3, 3)])
    min_small_windows: List[Triple] = field(default_factory=lambda: [(1, 1, 1)] * 4)
    window_scale: int = 2  # the expansion ratio r between successive window pairs
    num_heads: List[int] = field(default_factory=lambda: [1, 2, 2, 4])
    min_dim_head: List[int] = field(default_factory=lambda: [4, 8, 8, 16])
    attn_drop: float = 0.1
    proj_drop: float = 0.1
    conv_drop: float = 0.1
    qkv_bias: bool = True

    # ----------------------------------------------------------------- presets
    @classmethod
    def autopet(cls, **overrides) -> VeloxSegConfig:
        """AutoPET-II: 2 x 96^3 patches (the configuration of the shipped model)."""
        return cls(**overrides)

    @classmethod
    def hecktor(cls, **overrides) -> VeloxSegConfig:
        """Hecktor 2022: 2 x 128 x 128 x 64 patches, anisotropic windows."""
        values = dict(
            input_size=(128, 128, 64),
            min_big_windows=[(4, 4, 2), (8, 8, 4), (4, 4, 2), (4, 4, 2)],
        )
        values.update(overrides)
        return cls(**values)

    # ----------------------------------------------------------------- derived
    @property
    def stages(self) -> int:
        return len(self.num_heads)

    def channels(self, stage: int) -> int:
        return self.base_channels * 2**stage

    def grid(self, stage: int) -> Triple:
        """Feature grid of a stage (0-based) for the configured input size."""
        scale = self.patch_size * 2**stage
        return tuple(s // scale for s in self.input_size)

    def window_pairs(self, stage: int) -> List[WindowPair]:
        """Window pairs of a stage: double big and small windows while the big one fits on any axis.

        This is the authors' growth rule (spec §2.2, §8.15), not the paper's log formula.
        """
        grid = self.grid(stage)
        big, small = self.min_big_windows[stage], self.min_small_windows[stage]
        pairs = []
        while any(b <= g for b, g in zip(big, grid)):
            pairs.append(WindowPair(tuple(big), tuple(small)))
            big = tuple(b * self.window_scale for b in big)
            small = tuple(s * self.window_scale for s in small)
        return pairs

    def qk_channels(self, stage: int) -> int:
        """Q/K width = pairs x heads x min head size (the code's rule, spec §0.5)."""
        return len(self.window_pairs(stage)) * self.num_heads[stage] * self.min_dim_head[stage]

    def v_channels(self, stage: int) -> int:
        """V width = smallest multiple of the Q/K width that is >= the stage's channels."""
        unit = self.qk_channels(stage)
        return -(-self.channels(stage) // unit) * unit

    def required_multiple(self) -> Triple:
        """Every input axis must be a multiple of this for all windows to tile their stage grid."""
        from math import lcm

        multiple = [1, 1, 1]
        for stage in range(self.stages):
            scale = self.patch_size * 2**stage
            for pair in self.window_pairs(stage):
                multiple = [lcm(m, b * scale) for m, b in zip(multiple, pair.big)]
        return tuple(multiple)

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> VeloxSegConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown VeloxSeg config keys: {', '.join(unknown)}")
        converted = dict(values)
        for key in ("input_size", "kernel_sizes"):
            if key in converted:
                converted[key] = tuple(converted[key])
        for key in ("min_big_windows", "min_small_windows"):
            if key in converted:
                converted[key] = [tuple(w) for w in converted[key]]
        return cls(**converted)
