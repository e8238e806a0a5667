"""Statistics: detection and rate metrics with bootstrap intervals (:mod:`.metrics`) and the recovery analysis
of SRI signals (:mod:`.recovery`: RR, ASR, IRR, incomplete recovery, HRR/FRR, LDA geometry)."""
