"""Calibration: observe the planned sites on real data, turn their ranges into QParams."""

from qcompile.calibration.methods import CALIBRATORS, MethodOptions, qparams_for
from qcompile.calibration.observer import RangeObserver

__all__ = ["CALIBRATORS", "MethodOptions", "RangeObserver", "qparams_for"]
