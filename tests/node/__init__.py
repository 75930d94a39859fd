"""Tests on a real one-node Kubernetes (marker ``node``)."""
