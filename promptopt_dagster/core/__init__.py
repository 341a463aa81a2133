"""Plain-Python domain objects: no Dagster import allowed here."""
