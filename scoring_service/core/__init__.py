"""The service's core: settings, errors, security, metrics, logs, process policy and the
answer shapes every domain shares. Imports nothing else of the service."""
