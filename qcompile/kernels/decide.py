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


def default_pair(pixel_extent: int, vector_extent: int, regs: RegisterModel) -> tuple[int, int]:
    """The default register tile: maximises reuse (multiply-adds per operand loaded: p*v / (p+v))
    among the tiles whose accumulators, operands and scratch fit the vector registers (`regs`),
    preferring more channel vectors (contiguous weights) on ties."""
    best, best_score = (1, 1), -1.0
    for p in divisors(pixel_extent, 8):
        for v in divisors(vector_extent, regs.total):
            if not regs.fits(p, v):
                continue
            score = p * v / (p + v) + 1e-3 * v
            if score > best_score:
                best, best_score = (p, v), score
    return best


class Decider:
    """The heuristic default: register-blocked tiles that fill the register budget."""

    sampling = False

    def tile_pair(
        self, sch: s_tir.Schedule, pixels, vectors, pixel_extent: int, vector_extent: int, regs: RegisterModel
    ) -> tuple[list, list]:
        """Split `pixels` and `vectors` (loops) into [outer, inner]: the register tile."""
        p, v = default_pair(pixel_extent, vector_extent, regs)
        p_outer, p_inner = sch.split(pixels, [None, p])
        v_outer, v_inner = sch.split(vectors, [None, v])
        return [p_outer, p_inner], [v_outer, v_inner]

    def tile(self, sch: s_tir.Schedule, loop, extent: int, prefer: int) -> list:
        """Split `loop` with the largest divisor of `extent` not above `prefer`."""
        factor = max(divisors(extent, prefer))
        return list(sch.split(loop, [None, factor]))


class Sampler(Decider):
    """MetaSchedule's search space: every tile a `sample_perfect_tile` decision the tuner mutates.
    With `start_at_default`, the decisions are the default's: the tuner's first, measured seed, so a
    tuned kernel is never slower than the untuned one."""

    sampling = True

    def __init__(self, start_at_default: bool = False) -> None:
        self.start_at_default = start_at_default

    def tile_pair(self, sch, pixels, vectors, pixel_extent, vector_extent, regs):
        p_max, v_max = 8, max(regs.total // 4, 2)
        pd = vd = None
        if self.start_at_default:
            p, v = default_pair(pixel_extent, vector_extent, regs)
            pd, vd = [pixel_extent // p, p], [vector_extent // v, v]
            p_max, v_max = max(p_max, p), max(v_max, v)
        p_split = sch.sample_perfect_tile(pixels, n=2, max_innermost_factor=p_max, decision=pd)
        v_split = sch.sample_perfect_tile(vectors, n=2, max_innermost_factor=v_max, decision=vd)
        return list(sch.split(pixels, p_split)), list(sch.split(vectors, v_split))

    def tile(self, sch, loop, extent, prefer):
        limit = max(prefer, 2) * 2
        decision = None
        if self.start_at_default:
            factor = max(divisors(extent, prefer))
            decision, limit = [extent // factor, factor], max(limit, factor)
        factors = sch.sample_perfect_tile(loop, n=2, max_innermost_factor=limit, decision=decision)
        return list(sch.split(loop, factors))
