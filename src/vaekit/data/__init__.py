"""The data: one tensor per split (dataset) and the sources that read it (sources/)."""
