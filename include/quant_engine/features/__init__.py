"""Feature definitions (one source for batch and stream) and the offline and online stores."""
