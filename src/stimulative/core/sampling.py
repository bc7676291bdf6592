"""Sampling spaces of sub-networks (docs/method.md, "Sampling spaces").

* ``ordered`` (default, best in the paper): per stage keep the first d_i blocks, d_i ~ U{min_i..c_i}.
* ``inter_stage`` (InterSSR, ST++): d_i = c_i - u, u ~ U{0..r_i-1}; r_i = 1 keeps stage i full.
* ``stochastic``: keep a random subset of the skippable blocks (each kept with probability 1/2).
* ``raw``: the unraveled view of Veit et al.: per skippable block take either the residual branch (BRANCH)
  or the identity path (SKIP), with probability 1/2 each; unskippable blocks always run.
* ``choices``: one of the given depth configurations, uniformly: the exits a deployment will use (a language
  model's draft exit, ``depths=[8]``), rather than every depth.

Every space is seeded (its own ``random.Random``), has ``len()`` and can be enumerated when small.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Sequence

from .elastic import BRANCH, RUN, SKIP

__all__ = ["SampleSpace", "SAMPLING_KINDS"]

SAMPLING_KINDS = ("ordered", "inter_stage", "stochastic", "raw", "choices")


class SampleSpace:
    """A seeded space of sub-network depth configurations.

    Build with the class methods (``SampleSpace.ordered(ed.full_depths)``); ``sample()`` returns one config
    that ``ElasticDepth.depth`` accepts.

    Example:
        >>> space = SampleSpace.inter_stage([3, 4, 6, 3], ranges=[1, 2, 4, 1], seed=0)
        >>> len(space)
        8
        >>> space.sample()[0]   # stage 1 is always full
        3
    """

    def __init__(self, kind: str, full_depths: Sequence[int], min_depths: Sequence[int] | None = None,
                 ranges: Sequence[int] | None = None, skippable: Sequence[Sequence[bool]] | None = None,
                 seed: int | None = None, depths: Sequence | None = None):
        if kind not in SAMPLING_KINDS:
            raise ValueError(f"unknown sampling kind {kind!r}; valid choices: {', '.join(SAMPLING_KINDS)}")
        self.kind = kind
        self.full_depths = [int(c) for c in full_depths]
        if not self.full_depths or min(self.full_depths) < 1:
            raise ValueError(f"full_depths must be positive ints, got {list(full_depths)}")
        self.min_depths = [1] * len(self.full_depths) if min_depths is None else [int(m) for m in min_depths]
        if len(self.min_depths) != len(self.full_depths) or any(
            not 1 <= m <= c for m, c in zip(self.min_depths, self.full_depths)
        ):
            raise ValueError(f"min_depths {self.min_depths} must be within 1..full_depths {self.full_depths}")
        if kind == "inter_stage":
            if ranges is None or len(ranges) != len(self.full_depths):
                raise ValueError(f"inter_stage needs one range per stage ({len(self.full_depths)}), got {ranges}")
            for i, (r, c, m) in enumerate(zip(ranges, self.full_depths, self.min_depths)):
                if not 1 <= int(r) <= c - m + 1:
                    raise ValueError(f"range {r} of stage {i} must be in 1..{c - m + 1} (depth {c}, min {m})")
            self.ranges = [int(r) for r in ranges]
        else:
            self.ranges = [c - m + 1 for c, m in zip(self.full_depths, self.min_depths)]
        self.depths = self._choices(depths) if kind == "choices" else None
        if depths is not None and kind != "choices":
            raise ValueError(f"depths are the configurations of sampling 'choices', not {kind!r}")
        if skippable is None:
            # default: the first block of every stage is fixed, the others are skippable
            skippable = [[False] + [True] * (c - 1) for c in self.full_depths]
        self.skippable = [[bool(s) for s in row] for row in skippable]
        if [len(r) for r in self.skippable] != self.full_depths:
            raise ValueError("skippable must have one flag per block of every stage")
        self.seed = seed
        self.rng = random.Random(seed)

    # -------------------------------------------------------------------------------------------------------
    @classmethod
    def ordered(cls, full_depths: Sequence[int], min_depths: Sequence[int] | None = None,
                seed: int | None = None) -> SampleSpace:
        """Ordered residual sampling: first d_i blocks of each stage, d_i uniform in min_i..c_i."""
        return cls("ordered", full_depths, min_depths=min_depths, seed=seed)

    @classmethod
    def inter_stage(cls, full_depths: Sequence[int], ranges: Sequence[int], min_depths: Sequence[int] | None = None,
                    seed: int | None = None) -> SampleSpace:
        """InterSSR: d_i = c_i - u, u uniform in 0..r_i-1 (ResNet-50: ranges=[1, 2, 4, 1])."""
        return cls("inter_stage", full_depths, min_depths=min_depths, ranges=ranges, seed=seed)

    @classmethod
    def choices(cls, full_depths: Sequence[int], depths: Sequence, min_depths: Sequence[int] | None = None,
                seed: int | None = None) -> SampleSpace:
        """One of ``depths`` (configurations, or ints for a one-stage model), uniformly.

        Example:
            >>> SampleSpace.choices([30], depths=[8]).sample()
            [8]
        """
        return cls("choices", full_depths, min_depths=min_depths, depths=depths, seed=seed)

    def _choices(self, depths: Sequence | None) -> list[list[int]]:
        if not depths or isinstance(depths, (str, int)):
            raise ValueError(f"sampling 'choices' needs depths: a list of depth configurations, got {depths!r}")
        configs = []
        for d in depths:
            config = [d] if isinstance(d, int) and len(self.full_depths) == 1 else d
            if isinstance(config, int) or any(isinstance(c, bool) or not isinstance(c, int) for c in config) or \
                    len(config) != len(self.full_depths):
                raise ValueError(f"depths: {d!r} is not a depth per stage ({len(self.full_depths)} stages)")
            if not all(m <= c <= f for c, m, f in zip(config, self.min_depths, self.full_depths)):
                raise ValueError(f"depths: {list(config)} is outside {self.min_depths}..{self.full_depths}")
            if list(config) in configs:
                raise ValueError(f"depths: {list(config)} is listed twice")
            configs.append(list(config))
        return configs

    @classmethod
    def stochastic(cls, full_depths: Sequence[int], skippable: Sequence[Sequence[bool]] | None = None,
                   seed: int | None = None) -> SampleSpace:
        """Stochastic residual sampling: each skippable block kept with probability 1/2."""
        return cls("stochastic", full_depths, skippable=skippable, seed=seed)

    @classmethod
    def raw(cls, full_depths: Sequence[int], skippable: Sequence[Sequence[bool]] | None = None,
            seed: int | None = None) -> SampleSpace:
        """Raw (unraveled-path) sampling: per skippable block its residual branch or its identity path."""
        return cls("raw", full_depths, skippable=skippable, seed=seed)

    @classmethod
    def for_model(cls, ed, kind: str = "ordered", ranges: Sequence[int] | None = None,
                  seed: int | None = None, depths: Sequence | None = None) -> SampleSpace:
        """The space of ``kind`` for an ``ElasticDepth`` (uses its min depths and skippable blocks).

        ``stochastic`` always keeps the first block of every stage (docs/method.md, "Sampling spaces"),
        as ordered sampling does, even where that block has an identity shortcut (CIFAR ResNet ``layer1.0``,
        ViT ``blocks.0``); ``raw`` samples every skippable block (the full unraveled view).
        """
        skippable = [list(s.skippable) for s in ed.stages]
        if kind == "stochastic":
            skippable = [[False] + row[1:] for row in skippable]
        return cls(kind, ed.full_depths, min_depths=ed.min_depths, ranges=ranges, skippable=skippable, seed=seed,
                   depths=depths)

    # -------------------------------------------------------------------------------------------------------
    def manual_seed(self, seed: int) -> None:
        self.seed = seed
        self.rng.seed(seed)

    def _per_stage_choices(self) -> list[list]:
        if self.kind == "ordered":
            return [list(range(m, c + 1)) for m, c in zip(self.min_depths, self.full_depths)]
        if self.kind == "inter_stage":
            return [[c - u for u in range(r)] for c, r in zip(self.full_depths, self.ranges)]
        free = BRANCH if self.kind == "raw" else RUN
        choices = []
        for row in self.skippable:
            options = [(RUN,) if not s else (free, SKIP) for s in row]
            choices.append([tuple(p) for p in itertools.product(*options)])
        return choices

    def sample(self) -> list:
        """One configuration, drawn uniformly per stage, independently across stages (``choices``: one of them)."""
        if self.depths is not None:
            return list(self.rng.choice(self.depths))
        if self.kind in ("ordered", "inter_stage"):
            if self.kind == "ordered":
                return [self.rng.randint(m, c) for m, c in zip(self.min_depths, self.full_depths)]
            return [c - self.rng.randrange(r) for c, r in zip(self.full_depths, self.ranges)]
        free = BRANCH if self.kind == "raw" else RUN
        return [tuple(RUN if not s else (free if self.rng.random() < 0.5 else SKIP) for s in row)
                for row in self.skippable]

    def distinct(self, k: int, seed: int = 0) -> list[list[int]]:
        """``k`` distinct configurations of an ordered space drawn with ``seed``: the full and the smallest
        network first, then uniform draws (every configuration when ``k >= len(self)``; ``self.rng`` untouched).

        Example:
            >>> SampleSpace.ordered([3, 3, 3]).distinct(4, seed=0)[:2]
            [[3, 3, 3], [1, 1, 1]]
        """
        if self.kind != "ordered":
            raise ValueError(f"distinct() needs an ordered space, not {self.kind!r}")
        if k >= len(self):
            return [list(c) for c in self]
        rng = random.Random(seed)
        full, smallest = list(self.full_depths), list(self.min_depths)
        chosen = [full, smallest] if full != smallest else [full]
        while len(chosen) < k:
            config = [rng.randint(m, c) for m, c in zip(self.min_depths, self.full_depths)]
            if config not in chosen:
                chosen.append(config)
        return chosen[:k]

    def __len__(self) -> int:
        if self.depths is not None:
            return len(self.depths)
        if self.kind in ("ordered", "inter_stage"):
            return math.prod(self.ranges)
        return math.prod(2 ** sum(row) for row in self.skippable)

    def __iter__(self) -> Iterator[list]:
        """Enumerate every configuration (use only for small spaces; see ``len()``)."""
        if self.depths is not None:
            yield from (list(c) for c in self.depths)
            return
        for combo in itertools.product(*self._per_stage_choices()):
            yield list(combo)

    def __contains__(self, config) -> bool:
        config = list(config)
        if self.depths is not None:
            return config in self.depths
        if len(config) != len(self.full_depths):
            return False
        return all(item in choices for item, choices in zip(
            [tuple(c) if not isinstance(c, int) else c for c in config], self._per_stage_choices()))

    def __repr__(self) -> str:
        extra = f", ranges={self.ranges}" if self.kind == "inter_stage" else ""
        return f"SampleSpace.{self.kind}({self.full_depths}{extra}, seed={self.seed}, size={len(self)})"
