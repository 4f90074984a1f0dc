"""Fetching objects from the object store and decoding them into images."""
