"""One error family: the CLI turns any QCompileError into a one-line message and exit code 2."""


class QCompileError(Exception):
    """A problem the user can fix (bad input, unsupported model, bad option combination)."""


class InputError(QCompileError):
    """A file or option given by the user is missing, malformed or inconsistent with the model."""


class UnsupportedModelError(QCompileError):
    """The model uses something qcompile (or TVM's ONNX frontend) cannot compile."""


class CalibrationDataError(InputError):
    """Calibration or evaluation data does not fit the model (names, shapes, dtypes, values)."""


class VerificationFailed(QCompileError):
    """The compiled artifact misses an accuracy bar the user asked for; carries the full metrics."""

    def __init__(self, message: str, metrics: dict) -> None:
        super().__init__(message)
        self.metrics = metrics
