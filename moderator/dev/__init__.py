"""Development only: the embedded stack, sample images, test servers and tiny checkpoints.

Product code never imports this package (tests/test_layout.py holds it so); `cli/` and `dev/`
may."""
