"""Who picks a template's tile sizes: a fixed heuristic (the untuned default) or MetaSchedule's
sampling instructions (the tuning search space). The templates call the same methods either way, so
a tuned schedule is the default schedule with better numbers, and a tuning record replays exactly.

Only numbers are decided here. Structural alternatives (loop orders, lane widths) are separate design
spaces, because a trace replays the instructions a template ran, not the Python that chose them."""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir


@dataclass(frozen=True)
class RegisterModel:
    """Vector registers a p-pixel x v-vector tile needs: accumulators, the operands loaded per step
    (a weight vector per channel vector, an activation broadcast per pixel) and scratch."""

    total: int
    per_accumulator: int = 1  # 2 for the `pairs` form (two partial sums per channel vector)
    per_vector: int = 1  # weight registers per channel vector and step
    per_pixel: int = 1  # activation registers per pixel and step
    scratch: int = 2

    def fits(self, p: int, v: int) -> bool:
        need = self.per_accumulator * p * v + self.per_vector * v + min(self.per_pixel * p, 2) + self.scratch
        return need <= self.total


def divisors(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


class Decider:
    """The heuristic default: register-blocked tiles that fill the register budget."""

    sampling = False

    def tile_pair(
        self, sch: s_tir.Schedule, pixels, vectors, pixel_extent: int, vector_extent: int, regs: RegisterModel
    ) -> tuple[list, list]:
        """Split `pixels` and `vectors` (loops) into [outer, inner]: the register tile.

        Maximises reuse (multiply-adds per operand loaded: p*v / (p+v)) among the tiles whose
        accumulators, operands and scratch fit the vector registers (`regs`), preferring more channel
        vectors (contiguous weights) on ties."""
        best = (1, 1)
        best_score = -1.0
        for p in divisors(pixel_extent, 8):
            for v in divisors(vector_extent, regs.total):
                if not regs.fits(p, v):
                    continue
                score = p * v / (p + v) + 1e-3 * v
                if score > best_score:
                    best, best_score = (p, v), score
        p_outer, p_inner = sch.split(pixels, [None, best[0]])
        v_outer, v_inner = sch.split(vectors, [None, best[1]])
        return [p_outer, p_inner], [v_outer, v_inner]

    def tile(self, sch: s_tir.Schedule, loop, extent: int, prefer: int) -> list:
        """Split `loop` with the largest divisor of `extent` not above `prefer`."""
        factor = max(divisors(extent, prefer))
        return list(sch.split(loop, [None, factor]))


class Sampler(Decider):
    """MetaSchedule's search space: every tile a `sample_perfect_tile` decision the tuner mutates."""

    sampling = True

    def tile_pair(self, sch, pixels, vectors, pixel_extent, vector_extent, regs):
        p = sch.sample_perfect_tile(pixels, n=2, max_innermost_factor=8)
        v = sch.sample_perfect_tile(vectors, n=2, max_innermost_factor=max(regs.total // 4, 2))
        return list(sch.split(pixels, p)), list(sch.split(vectors, v))

    def tile(self, sch, loop, extent, prefer):
        factors = sch.sample_perfect_tile(loop, n=2, max_innermost_factor=max(prefer, 2) * 2)
        return list(sch.split(loop, factors))
