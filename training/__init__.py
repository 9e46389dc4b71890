"""training: fits member networks and the stacker into a model-zoo release, and evaluates it."""
