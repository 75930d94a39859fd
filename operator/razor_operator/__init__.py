"""razor's Kubernetes operator (imported as razor_operator): ``razor-operator --help``."""
