"""qcompile's CPU kernels: TE computes (`compute`), tensor intrinsics (`intrinsics`), schedule
templates (`templates`) and who picks their tile sizes (`decide`)."""
