"""The stages of one request (shared ARCHITECTURE's path): map the business object to entity
keys, read its online features, compute on-demand features, predict, label."""
