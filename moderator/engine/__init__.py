"""Guard-model engines behind one interface, and the micro-batching window in front of them."""
