"""The streaming edge: Kafka topics in, the core engine per partition, topics out."""
