"""Credit scoring domain jobs: loading Feast's credit-scoring data into the offline store."""
