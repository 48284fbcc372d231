"""Put on PYTHONPATH for the tuner's process tree only (`qcompile.tuning.tuner`): `import torch` fails.

tvm_ffi imports torch whenever it is installed (qcompile's test extra installs it). The tuner and the
build/run workers MetaSchedule starts for every batch of candidates never need torch, and with it each
worker takes ~4x longer to start (5 s instead of 1.2 s here), and TVMScript parsing at start-up, which
walks sys.modules for every frame of inspect.stack(), becomes minutes instead of seconds."""

import sys


class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not loaded in qcompile's tuner processes")
        return None


sys.meta_path.insert(0, _NoTorch())
