"""Tests of the container images in images/ (marker images); a package, like tests/k8s."""
