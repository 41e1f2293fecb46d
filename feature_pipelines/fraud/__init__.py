"""Payment-fraud jobs: synthetic transactions, batch aggregates, stream windows."""
