"""Sandbox providers: one interface, a docker and a local implementation."""
