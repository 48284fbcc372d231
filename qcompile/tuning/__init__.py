"""Tuning: MetaSchedule over qcompile's kernel templates, databases keyed by target and TVM version."""
