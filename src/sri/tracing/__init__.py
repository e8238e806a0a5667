"""Tracing: plan → execute (:mod:`.executors`: local loop or Ray) → write (:mod:`.store`, the resumable run
folder) the per-step pooled states and texts of a prompt set (:mod:`.tracer`)."""
