"""Kafka in: consuming, offset tracking, backpressure and the transactional checkpoint."""
