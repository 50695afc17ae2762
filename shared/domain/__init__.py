"""The domain core: what a run, a data row, a model type and the data's quality are. No I/O here."""
