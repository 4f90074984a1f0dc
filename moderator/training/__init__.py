"""Offline datasets and evaluation of guard models."""
