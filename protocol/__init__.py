"""shardnet.protocol: the sans-IO core."""
