"""Building blocks of the model files that know about adapters and tensor-parallel shards."""
