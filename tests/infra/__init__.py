"""Deployment files: Kubernetes manifests, compose file, images."""
