"""Walk-forward validation: labels, purged splitters, backtest paths and overfitting statistics."""
