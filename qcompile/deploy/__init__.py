"""Deployment: toolchains for cross targets, the device bundle (`qcompile package`), emulated runs."""
