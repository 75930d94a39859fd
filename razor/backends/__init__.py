"""Backends: each turns a validated RazorJob into running nodes that keep the launcher contract."""
