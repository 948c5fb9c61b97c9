"""shardnet.node: the IO shell."""
