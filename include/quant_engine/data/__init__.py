"""Market data: the bar schema, its validation, and the sources that produce bars."""
