"""A real Apache Kafka cluster on loopback, for tests and `moderator dev-stack --kafka apache`."""
