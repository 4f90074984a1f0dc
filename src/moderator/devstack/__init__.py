"""The embedded development stack (mock Kafka cluster + S3 server) and sample images for it."""
