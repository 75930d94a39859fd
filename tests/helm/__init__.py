"""Tests of the Helm chart charts/razor (marker helm); a package, like tests/k8s."""
