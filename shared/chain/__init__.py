"""Chain port: hand a run to the next stage now, or schedule a stage for later."""
