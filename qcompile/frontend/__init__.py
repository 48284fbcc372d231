"""The ONNX side of `load`: specialise a shipped model's inputs and fold what they decide, before Relax."""
