"""The service's routes, one module per resource: health, models, predict, stream (and the pages)."""
