"""The local micro-batch engine: plan offset ranges, run the Beam stages, land the batch, repeat."""
