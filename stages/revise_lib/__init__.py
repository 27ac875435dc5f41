"""The revise stage's library: the verify-then-revise loop (:mod:`stages.revise_lib.repair`, shared
with eval's pass@1 with repair), the stage's inputs and outputs (:mod:`stages.revise_lib.data`) and
the stage itself (:mod:`stages.revise_lib.stage`)."""
