"""The edge NPU target (Arm Ethos-U): qcompile's integer graph written as a TFLite flatbuffer, compiled by
Vela, and verified on TFLite's reference integer kernels (LiteRT's BUILTIN_REF resolver)."""
