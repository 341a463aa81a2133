"""The Dagster layer: wires the plain-Python domain into partitioned assets, checks and a sensor."""
