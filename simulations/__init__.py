"""shardnet.simulations."""
