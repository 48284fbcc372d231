"""qcompile's Relax IR passes (installed as qcompile.passes)."""
